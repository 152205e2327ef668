"""Every command given bad input: one line on stderr, the right exit code, never a traceback.

The rule every command follows (the command group in ``cli/main.py`` prints the line):

- stderr holds exactly one line, ``error: <what is wrong>; <how to fix it>``; stdout is
  empty. Click's own usage block and rich's error panel are not shown.
- exit 2, usage errors, found before any file is read or written: an unknown command or
  option, a missing argument, a value of the wrong type, out of range or not among the
  choices, option values the model / training / demo configuration refuses, a --host that
  cannot be bound. Messages that do not name the fix themselves end in
  ``see 'attnres-probe <command> --help'``.
- exit 1, failures: a path that does not exist, is not a run (an empty folder, a plain file,
  a folder of unrelated files) or cannot be written, and operations that fail. Paths are never
  validated by Typer, so a missing path is exit 1 whether it is an argument or an option.
- No bad input starts training, a demo, a figure export, a model, a server or a browser: the
  entry points of that work are replaced by recorders here, and every test checks that none
  of them was reached.

Tests run in-process through Typer's CliRunner; one runs the installed console script to show
the real process behaves the same.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from attnres_probe.cli import app, cmd_dashboard
from attnres_probe.cli.main import TRACEBACK_ENV

runner = CliRunner()
COMMANDS = {"train", "dashboard", "export", "info", "prune", "demo", "claims"}


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], prog_name="attnres-probe")


@pytest.fixture
def heavy_work(monkeypatch) -> list[str]:
    """Replace what bad input must never reach with recorders; returns what was reached."""
    import webbrowser

    import attnres_probe.models
    import attnres_probe.tools.demo
    import attnres_probe.tools.export
    import attnres_probe.train

    reached: list[str] = []

    def recorder(name):
        def record(*args, **kwargs):
            reached.append(name)
            raise AssertionError(f"bad input reached {name}")

        return record

    monkeypatch.setattr(attnres_probe.train, "train", recorder("training"))
    monkeypatch.setattr(attnres_probe.tools.demo, "run_demo", recorder("the demo"))
    monkeypatch.setattr(attnres_probe.tools.export, "write_figures", recorder("figure export"))
    monkeypatch.setattr(attnres_probe.models, "build_model", recorder("building a model"))
    monkeypatch.setattr(cmd_dashboard.subprocess, "Popen", recorder("the dashboard server"))
    monkeypatch.setattr(webbrowser, "open", recorder("a browser"))
    return reached


@pytest.fixture
def paths(tmp_path, monkeypatch) -> dict[str, Path]:
    """Paths that are not runs, a real (tiny, recorded) run, and places that cannot be written;
    the working directory is ``tmp_path`` (defaults such as runs/ and figures/ land there)."""
    from test_app_runs import record, small

    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.bin").write_bytes(b"\x00" + os.urandom(256))  # binary: not a corpus either
    (junk / "notes").mkdir()
    (junk / "zarr.bin").write_bytes(b"\x00\x01")
    plain = tmp_path / "plain.txt"
    plain.write_text("not a run\n")
    run = tmp_path / "run"
    record(run, small("baseline"), 3)
    readme = tmp_path / "README.md"
    readme.write_text("# no claims markers here\n")
    return {
        "missing": tmp_path / "missing",
        "empty": empty,
        "junk": junk,
        "file": plain,
        "run": run,
        "readme": readme,
        "under_file": plain / "out",  # its parent is a plain file: cannot be created
        "under_file_json": plain / "out.json",
    }


def expand(args: tuple, paths: dict[str, Path]) -> list[str]:
    return [str(paths[a[1:]]) if a.startswith("@") else a for a in args]


def assert_one_line(result, code: int, *fragments: str) -> str:
    """The result is exit ``code`` with one ``error:`` line holding every fragment."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.exit_code == code, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    (line,) = lines
    assert line.startswith("error: ") and len(line) > len("error: ") + 10, line
    assert "unexpected" not in line, line  # an expected error, not the catch-all for bugs
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert result.stdout == "", result.stdout
    return line


# ----------------------------------------------------------------------------- paths (exit 1)

PATH_CASES = [
    # info: a run directory (or its .zarr store)
    ("info", ("@missing",), "does not exist"),
    ("info", ("@empty",), "is not a run"),
    ("info", ("@file",), "is not a run"),
    ("info", ("@junk",), "is not a run"),
    ("info", ("@missing", "--repair"), "does not exist"),
    ("info", ("@junk", "--repair"), "is not a run"),
    # export: one or more runs
    ("export", ("@missing",), "does not exist"),
    ("export", ("@empty",), "is not a run"),
    ("export", ("@file",), "is not a run"),
    ("export", ("@junk",), "is not a run"),
    ("export", ("@run", "@missing"), "does not exist"),
    # prune: a run directory holding a checkpoint
    ("prune", ("@missing",), "does not exist"),
    ("prune", ("@empty",), "no checkpoint.safetensors"),
    ("prune", ("@file",), "is a file, not a run directory"),
    ("prune", ("@junk",), "no checkpoint.safetensors"),
    ("prune", ("@run",), "no checkpoint.safetensors"),  # a recording without a checkpoint
    # claims: a folder of runs; README options
    ("claims", ("@missing",), "is not a directory"),
    ("claims", ("@empty",), "no runs"),
    ("claims", ("@file",), "is not a directory"),
    ("claims", ("@junk",), "no runs"),
    ("claims", ("@empty", "--update-readme", "@missing"), "is not a file"),
    ("claims", ("@empty", "--check-readme", "@readme"), "markers"),
    # dashboard: a folder of runs (an empty one is served: see below)
    ("dashboard", ("@missing",), "does not exist"),
    ("dashboard", ("@file",), "is a file"),
    # train and demo: --data is a corpus, --out a folder to write
    ("train", ("--data", "@missing"), "does not exist"),
    ("train", ("--data", "@empty"), "is empty"),
    ("train", ("--data", "@junk"), "is empty"),
    ("train", ("--out", "@file"), "is a file"),
    ("train", ("--out", "@under_file"), "cannot be written"),
    ("demo", ("--data", "@missing"), "does not exist"),
    ("demo", ("--data", "@empty"), "is empty"),
    ("demo", ("--data", "@junk"), "is empty"),
    ("demo", ("--out", "@file"), "is a file"),
    ("demo", ("--out", "@under_file"), "cannot be written"),
    # export --out: a folder of figures, or one figure's file
    ("export", ("@run", "--out", "@file"), "is a file"),
    ("export", ("@run", "--out", "@under_file"), "cannot be written"),
    ("export", ("@run", "-f", "loss", "--out", "@under_file_json"), "cannot be written"),
]


@pytest.mark.parametrize(
    "command,args,message",
    PATH_CASES,
    ids=[f"{c}-{' '.join(a)}" for c, a, _ in PATH_CASES],
)
def test_a_path_that_is_missing_not_a_run_or_unwritable_fails_in_one_line(
    heavy_work, paths, command, args, message
):
    result = invoke(command, *expand(args, paths))
    assert_one_line(result, 1, message)
    assert heavy_work == []


@pytest.mark.parametrize("command", ["train", "demo", "export"])
def test_a_read_only_out_folder_fails_before_any_work(heavy_work, paths, monkeypatch, command):
    """Root may write anywhere, so the read-only folder is simulated at os.access."""
    read_only = paths["empty"]
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if Path(path) == read_only and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    target = read_only / "out"
    args = ("@run",) if command == "export" else ()
    result = invoke(command, *expand(args, paths), "--out", target)
    assert_one_line(result, 1, "is not writable", str(target))
    assert heavy_work == [] and not target.exists()


@pytest.mark.parametrize("root", ["empty", "junk"])
def test_the_dashboard_serves_a_folder_without_runs_it_says_how_to_make_one(
    monkeypatch, paths, root
):
    """A ROOT with no runs yet is valid (runs may appear while it is open): served, not refused."""
    started = []

    class FakeServer:
        def __init__(self, cmd, env):
            started.append(cmd)

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(cmd_dashboard.subprocess, "Popen", FakeServer)
    result = invoke("dashboard", paths[root])
    assert result.exit_code == 0, result.output
    assert len(started) == 1


# ----------------------------------------------------------------------------- options (exit 2)

USAGE_CASES = [
    # the command line itself
    ("nosuch", (), "no such command 'nosuch'"),
    ("info", (), "missing argument"),
    ("export", (), "missing argument"),
    ("prune", (), "missing argument"),
    ("info", ("@run", "--bogus"), "no such option: --bogus"),
    ("claims", ("--bogus",), "no such option: --bogus"),
    ("train", ("--bogus",), "no such option: --bogus"),
    # train: option values the model and training configurations refuse
    ("train", ("--steps", "0"), "steps=0"),
    ("train", ("--steps", "-5"), "steps=-5"),
    ("train", ("--steps", "many"), "'--steps'"),
    ("train", ("--lr", "fast"), "'--lr'"),
    ("train", ("--lr", "-1"), "lr=-1.0 must be positive"),
    ("train", ("--residual", "dense"), "residual='dense' is not a residual kind"),
    ("train", ("--layers", "0"), "n_layers=0"),
    ("train", ("--layers", "3", "--residual", "block", "--n-blocks", "4"), "n_blocks=4"),
    ("train", ("--d-model", "30", "--n-heads", "4"), "not divisible"),
    ("train", ("--batch-size", "0"), "batch_size=0"),
    ("train", ("--seq-len", "-1"), "seq_len=-1"),
    ("train", ("--every", "-1"), "record_every=-1"),
    # demo
    ("demo", ("--steps", "0"), "'--steps'"),
    ("demo", ("--steps", "-1"), "'--steps'"),
    ("demo", ("--layers", "x"), "'--layers'"),
    ("demo", ("--d-model", "1"), "'--d-model'"),
    ("demo", ("--kinds", "dense"), "'dense' is not a residual kind"),
    ("demo", ("--kinds", ","), "kinds is empty"),
    ("demo", ("--kinds", "block,block"), "names a kind twice"),
    ("demo", ("--n-blocks", "3"), "n_blocks=3"),
    ("demo", ("--seed", "abc"), "'--seed'"),
    # export
    ("export", ("@run", "--figure", "nope"), "'nope' is not one of"),
    ("export", ("@run", "--format", "gif"), "'gif' is not one of"),
    ("export", ("@run", "--step", "last"), "'--step'"),
    ("export", ("@run", "-f", "loss", "--format", "svg", "-o", "@under_file_json"), "agree"),
    # info
    ("info", ("@run", "--json=maybe"), "--json"),
    # prune
    ("prune", ("@run", "--granularity", "head"), "'head' is not one of"),
    ("prune", ("@run", "--batches", "0"), "'--batches'"),
    ("prune", ("@run", "--batch-size", "-2"), "'--batch-size'"),
    ("prune", ("@run", "--seq-len", "1"), "'--seq-len'"),
    ("prune", ("@run", "--device", "gpu0"), "is not a torch device"),
    ("prune", ("@missing", "--device", "gpu0"), "is not a torch device"),  # options first
    # dashboard
    ("dashboard", ("--port", "0"), "is not a port number"),
    ("dashboard", ("--port", "-1"), "is not a port number"),
    ("dashboard", ("--port", "70000"), "is not a port number"),
    ("dashboard", ("--port", "http"), "'--port'"),
    ("dashboard", ("--host", "not a host!"), "cannot be bound"),
    ("dashboard", ("@missing", "--port", "0"), "is not a port number"),  # options first
]


@pytest.mark.parametrize(
    "command,args,message",
    USAGE_CASES,
    ids=[f"{c}-{' '.join(a)}" for c, a, _ in USAGE_CASES],
)
def test_a_bad_option_value_is_a_usage_error_in_one_line(heavy_work, paths, command, args, message):
    line = assert_one_line(invoke(command, *expand(args, paths)), 2, message)
    if "--help" in line:  # the pointer names the command whose options are listed
        expected = "attnres-probe" if command == "nosuch" else f"attnres-probe {command}"
        assert line.endswith(f"see '{expected} --help'"), line
    assert heavy_work == []


def test_only_messages_that_do_not_name_the_fix_point_at_help(paths):
    refused = assert_one_line(invoke("train", "--steps", "0"), 2, "steps=0")
    assert refused.endswith("see 'attnres-probe train --help'")
    typed = assert_one_line(invoke("export", paths["run"], "--step", "x"), 2, "'--step'")
    assert typed.endswith("see 'attnres-probe export --help'")
    own = assert_one_line(invoke("dashboard", "--port", "0"), 2, "--port 0")
    assert "--help" not in own


def test_the_matrix_covers_every_registered_command():
    registered = set(get_command(app).commands)
    assert registered == COMMANDS
    for cases in (PATH_CASES, USAGE_CASES):
        assert {c for c, _, _ in cases} >= COMMANDS


# ----------------------------------------------------------------------------- environment (exit 1)


def test_a_port_in_use_is_a_failure_before_the_server_starts(heavy_work):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = invoke("dashboard", "--port", str(port))
    assert_one_line(result, 1, f"port {port}", "not free", "--port")
    assert heavy_work == []


def test_a_static_export_without_a_browser_fails_in_one_line(paths, monkeypatch):
    """No Chrome for PNG: the exporter refuses before starting one; nothing is written."""
    monkeypatch.setenv("BROWSER_PATH", str(paths["missing"]))
    target = paths["empty"] / "loss.png"
    result = invoke("export", paths["run"], "-f", "loss", "-o", target)
    assert_one_line(result, 1, "needs Chrome or Chromium", "--format html")
    assert not target.exists()


def test_a_dashboard_without_streamlit_says_how_to_install_it(heavy_work, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "streamlit" else real(name)
    )
    assert_one_line(invoke("dashboard"), 1, "pip install 'attnres-probe[app]'")
    assert heavy_work == []


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="this machine has a CUDA device"
)
def test_pruning_on_a_missing_cuda_device_is_a_failure(heavy_work, paths):
    assert_one_line(invoke("prune", paths["run"], "--device", "cuda"), 1, "--device cpu")
    assert heavy_work == []


def test_an_unexpected_error_is_one_line_naming_how_to_see_the_traceback(monkeypatch, paths):
    import attnres_probe.analysis.summary

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(attnres_probe.analysis.summary, "run_summary", broken)
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    result = invoke("info", paths["run"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: unexpected KeyError") and f"{TRACEBACK_ENV}=1" in line

    monkeypatch.setenv(TRACEBACK_ENV, "1")
    result = invoke("info", paths["run"])
    assert isinstance(result.exception, KeyError)  # raised, so Python prints the traceback


def test_without_arguments_the_help_is_shown_not_an_error():
    result = invoke()
    assert result.exit_code == 2
    assert "Usage" in result.stdout and "error:" not in result.output


def test_the_installed_command_prints_the_same_single_line(tmp_path):
    """The console script, as a user runs it: exit codes and the line survive a real process."""
    exe = Path(sys.executable).parent / "attnres-probe"
    for args, code, fragment in (
        (["info", str(tmp_path / "missing")], 1, "does not exist"),
        (["train", "--steps", "0"], 2, "steps=0"),
    ):
        done = subprocess.run(
            [str(exe), *args], capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        assert done.returncode == code, done.stderr
        assert done.stdout == "" and "Traceback" not in done.stderr
        (line,) = done.stderr.splitlines()
        assert line.startswith("error: ") and fragment in line
