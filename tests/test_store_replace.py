"""One writer at a time, and a recording replaced atomically for readers: a reader sees the old
recording or the new one, never a mix; two writers created at the same instant give one clear
refusal; a run's folder is cleared for a new run in one rename."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from attnres_probe.store import (
    RunStoreError,
    RunWriter,
    list_runs,
    live_writer,
    move_run_aside,
    open_run,
    store_version,
)

COORDS = {"sublayer": np.arange(4), "source": np.array(["emb", "a", "b"], dtype=object)}
VARIABLES = {
    "loss": ("step",),
    "hidden_rms": ("step", "sublayer"),
    "depth_weights": ("step", "sublayer", "source"),
}


def _values(generation: int, step: int) -> dict:
    base = 1000.0 * generation + step
    return {
        "loss": base,
        "hidden_rms": base + np.arange(4),
        "depth_weights": np.full((4, 3), base),
    }


def _record(path, generation: int, n_steps: int) -> None:
    with RunWriter(path, VARIABLES, COORDS, {"generation": generation}, flush_every=3) as w:
        for s in range(n_steps):
            w.append(s, _values(generation, s))


def _assert_one_recording(ds) -> int:
    """Every array of ``ds`` comes from the recording its attributes name; its generation."""
    assert "dropped" not in ds.attrs, ds.attrs["dropped"]
    assert set(ds.data_vars) == set(VARIABLES) and "step" in ds.coords
    g, n = ds.attrs["generation"], ds.sizes["step"]
    assert ds["step"].values.tolist() == list(range(n))
    expected = 1000.0 * g + np.arange(n)
    np.testing.assert_array_equal(ds["loss"].values, expected)
    np.testing.assert_array_equal(ds["hidden_rms"].values, expected[:, None] + np.arange(4))
    assert (ds["depth_weights"].values == expected[:, None, None]).all()
    return g


REPLACER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from attnres_probe.store import RunWriter
    path, count = sys.argv[1], int(sys.argv[2])
    coords = {"sublayer": np.arange(4), "source": np.array(["emb", "a", "b"], object)}
    variables = {"loss": ("step",), "hidden_rms": ("step", "sublayer"),
                 "depth_weights": ("step", "sublayer", "source")}
    for g in range(1, count + 1):
        with RunWriter(path, variables, coords, {"generation": g}, flush_every=3) as w:
            for s in range(7):
                base = 1000.0 * g + s
                w.append(s, {"loss": base, "hidden_rms": base + np.arange(4),
                             "depth_weights": np.full((4, 3), base)})
        print(g, flush=True)
    """
)


def test_a_reader_sees_the_old_recording_or_the_new_one_never_a_mix(tmp_path):
    run = tmp_path / "run"
    _record(run, generation=0, n_steps=7)
    proc = subprocess.Popen(
        [sys.executable, "-c", REPLACER, str(run), "12"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = set()
    try:
        while proc.poll() is None:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a partial read would warn
                seen.add(_assert_one_recording(open_run(run)))
    finally:
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.split() == [str(g) for g in range(1, 13)]
    assert len(seen) >= 3  # it was replaced several times while read
    assert _assert_one_recording(open_run(run)) == 12
    assert sorted(p.name for p in run.iterdir()) == ["recording.zarr"]  # nothing left beside


@pytest.mark.parametrize("delay", [0.0, 0.004, 0.011])
def test_a_writer_killed_while_replacing_a_run_leaves_one_recording_and_no_debris(tmp_path, delay):
    run = tmp_path / "run"
    _record(run, generation=0, n_steps=7)
    proc = subprocess.Popen(
        [sys.executable, "-c", REPLACER, str(run), "1000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(3):  # a few replacements done, the next one under way
            assert proc.stdout.readline(), proc.stderr.read()
        time.sleep(delay)  # land the kill at different points of creating and swapping
    finally:
        proc.kill()
        proc.communicate()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _assert_one_recording(open_run(run)) >= 3
    _record(run, generation=9, n_steps=2)  # the next writer clears what the killed one left
    assert sorted(p.name for p in run.iterdir()) == ["recording.zarr"]
    assert _assert_one_recording(open_run(run)) == 9


def test_a_lazily_opened_run_refuses_reads_once_its_recording_is_replaced(tmp_path):
    run = tmp_path / "run"
    _record(run, generation=0, n_steps=7)
    old = open_run(run, lazy=True)
    _record(run, generation=1, n_steps=3)
    with pytest.raises(RunStoreError, match="its recording was replaced after it was opened"):
        old["hidden_rms"].values  # noqa: B018 - the read is the point
    assert _assert_one_recording(open_run(run, lazy=True)) == 1


def test_each_recording_gets_its_own_id_so_caches_see_a_replacement(tmp_path):
    run = tmp_path / "run"
    _record(run, generation=0, n_steps=7)
    first = open_run(run).attrs["recording_id"], store_version(run)
    _record(run, generation=0, n_steps=7)  # the same steps and values again
    second = open_run(run).attrs["recording_id"], store_version(run)
    assert first[0] != second[0] and first[1] != second[1]
    with RunWriter(run, VARIABLES, COORDS, flush_every=3, mode="a") as w:
        w.append(7, _values(0, 7))
    assert open_run(run).attrs["recording_id"] == second[0]  # resumed: the same recording


RACER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from attnres_probe.store import RunWriter, RunStoreError
    coords = {"sublayer": np.arange(4), "source": np.array(["emb", "a", "b"], object)}
    variables = {"loss": ("step",), "hidden_rms": ("step", "sublayer"),
                 "depth_weights": ("step", "sublayer", "source")}
    print("ready", flush=True)
    sys.stdin.readline()  # both start creating the moment the test says go
    try:
        w = RunWriter(sys.argv[1], variables, coords, flush_every=2)
    except RunStoreError as err:
        print("refused:", err, flush=True)
        sys.exit(3)
    for s in range(6):
        w.append(s, {"loss": s, "hidden_rms": np.arange(4) + s,
                     "depth_weights": np.full((4, 3), s)})
    time.sleep(0.5)  # still live while the other one is refused
    w.close()
    print("wrote", flush=True)
    """
)


@pytest.mark.parametrize("existing", [False, True], ids=["new-path", "replacing-a-run"])
def test_two_writers_created_at_the_same_instant_one_gets_one_clear_error(tmp_path, existing):
    run = tmp_path / "run"
    if existing:
        _record(run, generation=0, n_steps=7)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(run)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        assert p.stdout.readline() == "ready\n", p.stderr.read()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        results.append((p.pid, p.returncode, out, err))
    assert sorted(code for _, code, _, _ in results) == [0, 3], results
    (winner,) = [pid for pid, code, _, _ in results if code == 0]
    (refusal,) = [out for _, code, out, _ in results if code == 3]
    assert refusal.startswith(f"refused: run {run}: it is being written by process {winner}")
    assert refusal.count("\n") == 1
    assert all(err == "" for *_, err in results), results  # no zarr errors, no futures
    ds = open_run(run)
    assert ds.sizes["step"] == 6 and ds.attrs["status"] == "finished"


def test_two_writers_created_at_the_same_instant_in_one_process_one_is_refused(tmp_path):
    run = tmp_path / "run"
    start, outcomes = threading.Barrier(2), []

    def create() -> None:
        start.wait()
        try:
            outcomes.append(RunWriter(run, VARIABLES, COORDS, flush_every=2))
        except RunStoreError as err:
            outcomes.append(err)

    threads = [threading.Thread(target=create) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (writer,) = [o for o in outcomes if isinstance(o, RunWriter)]
    (refusal,) = [o for o in outcomes if isinstance(o, RunStoreError)]
    assert f"being written by process {os.getpid()}" in str(refusal)
    writer.append(0, _values(0, 0))
    writer.close()
    assert open_run(run).sizes["step"] == 1


def test_live_writer_names_the_process_writing_a_run(tmp_path):
    run = tmp_path / "run"
    assert live_writer(run) is None  # no run at all
    w = RunWriter(run, VARIABLES, COORDS, flush_every=2)
    assert live_writer(run)["pid"] == os.getpid()
    w.close()
    assert live_writer(run) is None


def test_a_run_moved_aside_leaves_nothing_at_its_path_and_is_not_listed(tmp_path):
    run = tmp_path / "runs" / "run"
    _record(run, generation=0, n_steps=7)
    (run / "checkpoint.safetensors").write_bytes(b"weights of the old model")
    aside = Path(move_run_aside(run))
    assert not run.exists()
    assert aside.parent == run.parent and aside.name.startswith(".run.replaced-")
    assert (aside / "checkpoint.safetensors").read_bytes() == b"weights of the old model"
    assert _assert_one_recording(open_run(aside)) == 0
    assert list_runs(tmp_path / "runs") == []
    _record(run, generation=1, n_steps=2)  # a new run at the path, with nothing of the old
    assert sorted(p.name for p in run.iterdir()) == ["recording.zarr"]


def test_a_live_run_is_not_moved_aside(tmp_path):
    run = tmp_path / "run"
    w = RunWriter(run, VARIABLES, COORDS, flush_every=2)
    try:
        with pytest.raises(RunStoreError, match=f"being written by process {os.getpid()}"):
            move_run_aside(run)
        assert (run / "recording.zarr").is_dir()
    finally:
        w.close()
