"""A full disk under a training run: a real ENOSPC from a small tmpfs mounted for the test.

By default the probe warns once, the store keeps its last good flush and training runs to the
end; with ``strict=True`` the probe raises. Mounting needs root (CAP_SYS_ADMIN) on Linux; where
that is not allowed the tests are skipped and say why.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from probe_checks import batch, committed_steps, hook_count, read_run, tiny_model, train_steps

from attnres_probe.hooks import ProbeStoreError, ProbeWarning, probe
from attnres_probe.store import open_run

DISK_SIZE = "1m"


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A 1 MiB tmpfs mounted under tmp_path, unmounted afterwards."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a disk to fill) needs root on Linux")
    where = tmp_path / "disk"
    where.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0700", "tmpfs", str(where)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"cannot run mount to make a small tmpfs ({err})")
    if done.returncode != 0:
        pytest.skip(
            f"mounting a small tmpfs is not permitted here ({done.stderr.strip()}); "
            "it needs root with CAP_SYS_ADMIN"
        )
    yield where
    if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(disk: Path) -> Path:
    """Fill ``disk`` (as another program would) until writes fail with ENOSPC; the filler file.

    Completely: a flush rewrites chunk files of a fixed size through temp files, so with a few
    pages left it may still fit."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    block = b"\0" * 4096
    try:
        while True:
            os.write(fd, block)
    except OSError as err:
        assert err.errno == errno.ENOSPC, err
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_warns_once_keeps_the_last_good_flush_and_training_goes_on(small_disk):
    run = small_disk / "run"
    model = tiny_model("baseline")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with probe(model, run, flush_every=4) as p:
            losses = train_steps(model, p, [batch(i) for i in range(8)])
            assert committed_steps(run) == 8
            fill(small_disk)
            losses += train_steps(model, p, [batch(i) for i in range(8, 24)])
            live = open_run(run)  # read while the disk is full and training goes on
            assert live["step"].values.tolist() == list(range(8))
    assert len(losses) == 24 and np.isfinite(losses).all()
    assert hook_count(model) == 0
    probe_warnings = [w for w in caught if issubclass(w.category, ProbeWarning)]
    assert len(probe_warnings) == 1, [str(w.message) for w in probe_warnings]
    message = str(probe_warnings[0].message)
    assert "No space left on device" in message and str(run) in message
    ds = read_run(run)  # the last good flush, whole
    assert ds["step"].values.tolist() == list(range(8))
    assert np.isfinite(ds["hidden_rms"].values).all()
    assert ds.attrs["status"] != "finished"  # the run never claims to be complete
    assert not list(run.rglob("*.partial"))  # failed writes leave no temp files behind


def test_a_full_disk_raises_when_strict_and_the_store_keeps_its_last_flush(small_disk):
    run = small_disk / "run"
    model = tiny_model("baseline")
    with pytest.raises(ProbeStoreError, match="No space left on device"):
        with probe(model, run, flush_every=4, strict=True) as p:
            train_steps(model, p, [batch(i) for i in range(8)])
            fill(small_disk)
            train_steps(model, p, [batch(i) for i in range(8, 12)])  # step 11 flushes
            pytest.fail("a full disk under strict=True did not raise")
    assert hook_count(model) == 0
    ds = read_run(run)
    assert ds["step"].values.tolist() == list(range(8))


def test_after_space_is_freed_the_kept_steps_are_written(small_disk):
    run = small_disk / "run"
    model = tiny_model("baseline")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with probe(model, run, flush_every=4) as p:
            train_steps(model, p, [batch(i) for i in range(4)])
            filler = fill(small_disk)
            train_steps(model, p, [batch(i) for i in range(4, 14)])
            assert committed_steps(run) == 4
            filler.unlink()
            train_steps(model, p, [batch(i) for i in range(14, 20)])
    assert sum(issubclass(w.category, ProbeWarning) for w in caught) == 1
    ds = read_run(run)
    assert ds["step"].values.tolist() == list(range(20))
    assert ds.attrs["status"] == "finished"
