"""What a damaged or read-only run tells a person: our error or one clean `warning:` line per
problem, never a raw OSError, Python's warning lines or numpy's notes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from attnres_probe.models.config import ModelConfig
from attnres_probe.store import RunStoreError, open_run
from attnres_probe.store.synthetic import write_run

ATTNRES_PROBE = str(Path(sys.executable).parent / "attnres-probe")

KILLED = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from attnres_probe.store import RunWriter
    w = RunWriter(sys.argv[1], {"loss": ("step",)}, flush_every=2)
    for s in range(7):
        w.append(s, {"loss": s})
    os.kill(os.getpid(), 9)  # leaves arrays past the commit marker: a run to repair
    """
)


@pytest.fixture
def read_only_disk(tmp_path) -> Path:
    """A small tmpfs under tmp_path: written first, then remounted read-only."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    where = tmp_path / "disk"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({done.stderr.strip()})")
    yield where
    if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_repairing_a_run_on_read_only_storage_is_our_error_and_reading_still_works(
    read_only_disk,
):
    run = read_only_disk / "run"
    subprocess.run([sys.executable, "-c", KILLED, str(run)], check=False)
    subprocess.run(["mount", "-o", "remount,ro", str(read_only_disk)], check=True)
    with pytest.raises(RunStoreError) as caught:
        open_run(run, repair=True)
    assert str(caught.value) == (
        f"run {run}: repairing it failed (Read-only file system); copy it somewhere writable "
        "to repair it, or open it without repair (reading needs none)"
    )
    assert open_run(run)["step"].values.tolist() == list(range(6))  # no repair needed to read

    done = subprocess.run(
        [ATTNRES_PROBE, "info", str(run), "--repair"], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert done.stderr == f"error: {caught.value}\n" and done.stdout == "", done.stderr


def test_info_on_a_damaged_run_prints_one_warning_line_per_problem(tmp_path):
    run = tmp_path / "run"
    write_run(run, ModelConfig(residual="baseline", n_layers=2, d_model=16, n_heads=2), 20)
    store = run / "recording.zarr"
    (store / "hidden_rms" / "c.0.0").unlink()  # every stream RMS lost: all-NaN statistics
    (store / "grad_norm" / "zarr.json").write_text('{"zarr_format": 3, "node_')
    done = subprocess.run([ATTNRES_PROBE, "info", str(run)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "steps recorded" in done.stdout
    assert done.stderr.splitlines() == [
        f"warning: run {run} was read in part: grad_norm: left out, its zarr.json is not valid "
        "JSON (truncated or corrupt)",
        f"warning: run {run} was read in part: hidden_rms: chunk(s) missing at step index 0–19, "
        "read as NaN",
    ]
