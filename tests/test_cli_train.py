"""The train command: bad input is one clear line and a non-zero exit, never a traceback."""

import pytest
from typer.testing import CliRunner

from attnres_probe.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), prog_name="attnres-probe")


def test_version_and_help_work():
    assert invoke("--version").stdout.startswith("attnres-probe ")
    result = invoke("--help")
    assert result.exit_code == 0 and "train" in result.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["--residual", "dense"], "residual='dense' is not a residual kind"),
        (["--residual", "block", "--layers", "3", "--n-blocks", "4"], "n_blocks=4 does not divide"),
        (["--data", "/no/such/corpus"], "does not exist"),
        (["--steps", "0"], "steps=0"),
    ],
)
def test_bad_train_input_is_one_clear_line(args, message, tmp_path):
    result = invoke("train", "--out", str(tmp_path / "run"), *args)
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert result.stderr.strip().count("\n") == 0 or "error:" in result.stderr.splitlines()[-1]


def test_empty_corpus_is_refused_with_its_path(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    result = invoke("train", "--data", str(empty), "--out", str(tmp_path / "run"))
    assert result.exit_code == 1
    assert "is empty" in result.stderr and str(empty) in result.stderr
    assert "Traceback" not in result.output


def test_train_command_writes_a_run(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text("the quick brown fox jumps over the lazy dog\n" * 400)
    out = tmp_path / "run"
    result = invoke(
        "train", "--layers", "1", "--d-model", "16", "--n-heads", "2", "--steps", "3",
        "--batch-size", "2", "--seq-len", "16", "--data", str(data), "--out", str(out),
        "--every", "0",
    )
    assert result.exit_code == 0, result.output
    assert (out / "checkpoint.safetensors").exists()
    assert "held-out loss" in result.stdout
