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
    "args,code,message",
    [
        (["--residual", "dense"], 2, "residual='dense' is not a residual kind"),
        (
            ["--residual", "block", "--layers", "3", "--n-blocks", "4"],
            2,
            "n_blocks=4 does not divide",
        ),
        (["--steps", "0"], 2, "steps=0"),
        (["--data", "/no/such/corpus"], 1, "does not exist"),
    ],
)
def test_bad_train_input_is_one_clear_line(args, code, message, tmp_path):
    """Option values the configuration refuses are usage errors (2); a missing corpus fails (1)."""
    result = invoke("train", "--out", str(tmp_path / "run"), *args)
    assert result.exit_code == code
    assert message in result.stderr
    assert "Traceback" not in result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ")
    assert not (tmp_path / "run").exists()  # refused before anything was written


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
    options = "--layers 1 --d-model 16 --n-heads 2 --steps 3 --batch-size 2 --seq-len 16"
    result = invoke(
        "train", *options.split(), "--data", str(data), "--out", str(out), "--every", "0"
    )
    assert result.exit_code == 0, result.output
    assert (out / "checkpoint.safetensors").exists()
    assert "held-out loss" in result.stdout
