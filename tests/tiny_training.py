"""A tiny real training (probe, store, checkpoint) for the tests of runs and checkpoints, and
ways to run the command line as a user does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from synthetic_runs import small_corpus
from typer.testing import CliRunner

from attnres_probe.cli import app
from attnres_probe.models import ModelConfig
from attnres_probe.train import TrainConfig, TrainResult, train

TINY = ModelConfig(residual="baseline", n_layers=1, d_model=16, n_heads=2, max_seq_len=16)
TINY_OPTIONS = ["--layers", "1", "--d-model", "16", "--n-heads", "2", "--batch-size", "2"]
TINY_OPTIONS += ["--seq-len", "16"]


def tiny_train(run: Path, steps: int = 3, seed: int = 0, **changes) -> TrainResult:
    """Train TINY for ``steps`` steps into ``run`` on the small corpus, recorded every step."""
    cfg = TrainConfig(
        steps=steps,
        batch_size=2,
        seq_len=16,
        warmup_steps=1,
        eval_batches=1,
        seed=seed,
        data=small_corpus(),
        **changes,
    )
    return train(TINY, cfg, run)


def invoke(*args):
    """The command line in this process (Typer's runner): stdout and stderr apart."""
    return CliRunner().invoke(app, [str(a) for a in args], prog_name="attnres-probe")


def command(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    """The command line as a separate process, as a user runs it (stderr not a terminal)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "attnres_probe.cli", *[str(a) for a in args]],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def error_line(stderr: str) -> str:
    """The one ``error:`` line of a failed command (progress lines may come before it)."""
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr and "unexpected" not in errors[0], stderr
    return errors[0]
