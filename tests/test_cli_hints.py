"""What the command line tells people: commands named as they ran them, help that reads at 80
columns, a folder of runs listed by info, and train's defaults matching the demo."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from attnres_probe.cli import app

REPO = Path(__file__).resolve().parents[1]


def invoke(*args):
    return CliRunner().invoke(
        app, [str(a) for a in args], prog_name="attnres-probe", terminal_width=80
    )


def run_from(cwd: Path, argv: list[str]) -> subprocess.CompletedProcess:
    # A PATH without the virtual environment: the typed path is the only way to the command.
    env = {**os.environ, "PATH": "/usr/bin:/bin", "COLUMNS": "80"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_hints_name_the_command_the_way_it_was_run():
    exe = Path(sys.executable).parent / "attnres-probe"
    cwd = exe.parents[2]
    typed = os.path.relpath(exe, cwd)  # e.g. .venv/bin/attnres-probe
    done = run_from(cwd, [typed, "export", "no-such-run", "--step", "x"])
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().endswith(f"see '{typed} export --help'"), done.stderr
    done = run_from(cwd, [sys.executable, "-m", "attnres_probe.cli", "info", "--bogus"])
    assert done.stderr.strip().endswith("-m attnres_probe.cli info --help'"), done.stderr


def test_help_shows_no_types_on_flags_and_keeps_every_choice_whole_at_80_columns():
    from attnres_probe import figures

    text = invoke("export", "--help").stdout
    assert "<bool>" not in text and "--self-contained" in text
    flat = " ".join(text.split())
    for name in figures.FIGURES:
        assert name in flat, name  # never split inside a name
    train = invoke("train", "--help").stdout
    assert "--residual baseline|full|block" in train and "--device" in train
    assert max(len(line) for line in train.splitlines()) <= 80


def test_train_defaults_are_the_demos_model_and_recipe():
    from attnres_probe.cli.cmd_train import train
    from attnres_probe.tools.demo import OPTIONS, DemoConfig

    defaults = {
        name: p.default.default if hasattr(p.default, "default") else p.default
        for name, p in inspect.signature(train).parameters.items()
    }
    demo = DemoConfig()
    for option in ("layers", "d_model", "n_heads", "n_blocks", "steps", "batch_size", "seq_len"):
        part, field = OPTIONS[option]
        assert defaults[option] == getattr(getattr(demo, part), field), option
    assert defaults["lr"] == demo.train.lr
    readme = (REPO / "README.md").read_text()
    example = next(line for line in readme.splitlines() if line.startswith("attnres-probe train"))
    assert "--layers" not in example and "--steps" not in example  # the example is the defaults


def test_info_on_a_folder_of_runs_lists_them(tmp_path):
    from test_app_runs import record, small

    record(tmp_path / "demo" / "baseline", small("baseline"), 3)
    record(tmp_path / "demo" / "block", small("block", n_layers=2), 4)
    r = invoke("info", tmp_path / "demo")
    assert r.exit_code == 0, r.output
    assert "2 runs under" in r.stdout and "baseline" in r.stdout and "block" in r.stdout
    assert "info " in r.stdout.splitlines()[-1]  # how to see one of them
    listed = json.loads(invoke("info", tmp_path / "demo", "--json").stdout)
    assert [(e["name"], e["n_steps"]) for e in listed] == [("baseline", 3), ("block", 4)]
    r = invoke("info", tmp_path / "demo", "--repair")
    assert r.exit_code == 1 and "--repair mends one" in r.stderr
