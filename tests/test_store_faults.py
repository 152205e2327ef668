"""The run store under faults: killed writers, damaged files, wrong paths, failing disks.

Every fault ends in one of two ways: a RunStoreError that names the run, the problem and the
fix, or a read that keeps what is intact and says what it dropped — never zarr's own error.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
import warnings
from pathlib import Path

import fsspec
import numpy as np
import pytest
import xarray as xr
from fsspec.implementations.memory import MemoryFileSystem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from probe_checks import committed_steps
from typer.testing import CliRunner

from attnres_probe.cli import app
from attnres_probe.store import (
    SCHEMA_VERSION,
    RunNotFoundError,
    RunStoreError,
    RunStoreWarning,
    RunWriter,
    list_runs,
    open_run,
    repair,
)

COORDS = {
    "sublayer": np.arange(4),
    "kind": ("sublayer", np.array(["attn", "mlp"] * 2, dtype=object)),
    "source": np.array(["emb", "a", "b"], dtype=object),
}
VARIABLES = {
    "loss": ("step",),
    "hidden_rms": ("step", "sublayer"),
    "depth_weights": ("step", "sublayer", "source"),
}


def _values(step: int) -> dict:
    return {
        "loss": step,
        "hidden_rms": np.arange(4) + step,
        "depth_weights": np.full((4, 3), step / 100),
    }


def _record(path, n_steps: int, flush_every: int = 4, chunk_steps: int | None = None) -> Path:
    with RunWriter(
        path, VARIABLES, COORDS, {"residual": "full"}, flush_every, chunk_steps=chunk_steps
    ) as w:
        for s in range(n_steps):
            w.append(s, _values(s))
    return Path(path)


def _check_prefix(ds: xr.Dataset, at_least: int = 0) -> int:
    """Every step of ``ds`` holds exactly what the writer appended for it."""
    n = ds.sizes["step"]
    assert n >= at_least
    assert ds["step"].values.tolist() == list(range(n))
    assert ds["loss"].values.tolist() == list(range(n))
    np.testing.assert_array_equal(ds["hidden_rms"].values, np.arange(n)[:, None] + np.arange(4))
    np.testing.assert_allclose(ds["depth_weights"].values[:, 0, 0], np.arange(n) / 100, rtol=1e-6)
    return n


def _read_quietly(path, **kwargs) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RunStoreWarning)
        return open_run(path, **kwargs)


# ----------------------------------------------------------------------------- killed writers

KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from attnres_probe.store import RunWriter
    coords = {"sublayer": np.arange(4), "source": np.array(["emb", "a", "b"], object)}
    variables = {"loss": ("step",), "hidden_rms": ("step", "sublayer"),
                 "depth_weights": ("step", "sublayer", "source")}
    w = RunWriter(sys.argv[1], variables, coords, {"residual": "full"}, flush_every=3,
                  chunk_steps=12)
    s = 0
    while True:
        w.append(s, {"loss": s, "hidden_rms": np.arange(4) + s,
                     "depth_weights": np.full((4, 3), s / 100)})
        s += 1
    """
)


@pytest.mark.parametrize("delay", [0.0, 0.013, 0.029])
def test_killed_writer_leaves_every_committed_flush_readable(tmp_path, delay):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(run)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while committed_steps(run) < 30 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.01)
        seen = committed_steps(run)
        time.sleep(delay)  # land the kill at different points of a flush
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert seen >= 30
    ds = open_run(run)  # no repair needed to read it
    assert "dropped" not in ds.attrs
    n = _check_prefix(ds, at_least=seen)
    assert ds.attrs["status"] == "interrupted"

    report = repair(run)
    assert report.n_steps == n and report.status == ("running", "interrupted")
    assert not list(run.rglob("*.partial"))
    plain = xr.open_zarr(run / "recording.zarr", consolidated=False, chunks=None)
    assert plain.sizes["step"] == n
    np.testing.assert_array_equal(plain["hidden_rms"].values, ds["hidden_rms"].values)
    assert [i.status for i in list_runs(tmp_path)] == ["interrupted"]


CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from attnres_probe.store import RunWriter
    from attnres_probe.store.writer import RunWriter as W
    commit = W._commit
    def commit_then_die(self, **changes):
        if changes.get("n_steps") == 12:  # data of the 3rd flush written, marker not yet
            os._exit(0)
        commit(self, **changes)
    W._commit = commit_then_die
    coords = {"sublayer": np.arange(4), "source": np.array(["emb", "a", "b"], object)}
    variables = {"loss": ("step",), "hidden_rms": ("step", "sublayer"),
                 "depth_weights": ("step", "sublayer", "source")}
    w = RunWriter(sys.argv[1], variables, coords, {"residual": "full"}, flush_every=4)
    for s in range(20):
        w.append(s, {"loss": s, "hidden_rms": np.arange(4) + s,
                     "depth_weights": np.full((4, 3), s / 100)})
    """
)


def test_a_crash_between_data_and_marker_is_invisible_and_repair_trims_it(tmp_path):
    run = tmp_path / "run"
    subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(run)], check=True)
    store = run / "recording.zarr"
    (store / "loss" / "c.0.5f3a.partial").write_bytes(b"half a chunk")
    (store / "zarr.9c1e.partial").write_bytes(b'{"attri')
    with warnings.catch_warnings():  # zarr warns about the temp files
        warnings.simplefilter("ignore")
        plain = xr.open_zarr(store, consolidated=False, chunks=None)
    assert plain.sizes["step"] > 8  # plain xarray is misled by rows past the commit marker

    ds = open_run(run)
    assert "dropped" not in ds.attrs and _check_prefix(ds) == 8  # flushes 1 and 2 only
    assert ds.attrs["status"] == "interrupted"

    report = repair(run)
    assert report.trimmed["loss"][1] == 8 and len(report.removed) == 2
    assert "trimmed to the commit marker" in str(report)
    plain = xr.open_zarr(store, consolidated=False, chunks=None)
    assert plain.sizes["step"] == 8 and plain["loss"].values.tolist() == list(range(8))
    assert not repair(run).changed  # a second repair finds nothing to do


def test_repair_refuses_a_run_whose_writer_is_alive(tmp_path):
    with RunWriter(tmp_path / "run", VARIABLES, COORDS, flush_every=2) as w:
        w.append(0, _values(0))
        w.append(1, _values(1))
        with pytest.raises(RunStoreError, match="stop that writer first"):
            repair(tmp_path / "run")
        assert open_run(tmp_path / "run", repair=True).attrs["status"] == "running"


LIVE_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from attnres_probe.store import RunWriter
    coords = {"sublayer": np.arange(4), "source": np.array(["emb", "a", "b"], object)}
    variables = {"loss": ("step",), "hidden_rms": ("step", "sublayer"),
                 "depth_weights": ("step", "sublayer", "source")}
    def values(s):
        return {"loss": s, "hidden_rms": np.arange(4) + s,
                "depth_weights": np.full((4, 3), s / 100)}
    w = RunWriter(sys.argv[1], variables, coords, {"residual": "full"}, flush_every=2)
    for s in range(7):  # 3 flushes committed, step 6 buffered
        w.append(s, values(s))
    print("committed", flush=True)
    sys.stdin.read()  # the run stays open until the test closes stdin
    w.append(7, values(7))
    w.close()
    """
)


def _cli(*args: str):
    return CliRunner().invoke(app, list(args), prog_name="attnres-probe")


def test_a_run_written_by_another_process_reads_as_running_and_refuses_repair(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", LIVE_SCRIPT, str(run)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout.readline() == b"committed\n", proc.stderr.read()
        ds = open_run(run)
        assert ds.attrs["status"] == "running" and "dropped" not in ds.attrs
        assert _check_prefix(ds) == 6  # committed flushes only, not the buffered step
        assert _check_prefix(open_run(run, repair=True)) == 6  # repair skipped while live

        with pytest.raises(
            RunStoreError,
            match=f"run {run}: it is being written by process {proc.pid} .*stop that writer first",
        ):
            repair(run)
        refused = _cli("info", str(run), "--repair")
        assert refused.exit_code == 1
        assert refused.stderr.startswith(f"error: run {run}: it is being written by process")
        assert "Traceback" not in refused.output and refused.stdout == ""
        shown = _cli("info", str(run))
        assert shown.exit_code == 0 and "running" in shown.stdout
        assert [i.status for i in list_runs(tmp_path)] == ["live"]
    finally:
        proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert _check_prefix(open_run(run)) == 8
    repaired = _cli("info", str(run), "--repair")
    assert repaired.exit_code == 0 and "nothing to repair" in repaired.stderr


# ----------------------------------------------------------------------------- bad paths


def test_paths_that_are_not_runs_are_refused_with_the_reason(tmp_path):
    with pytest.raises(RunNotFoundError, match="does not exist"):
        open_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunNotFoundError, match="is not a run: it holds no recording.zarr"):
        open_run(tmp_path / "empty")
    (tmp_path / "file.txt").write_text("hello")
    with pytest.raises(RunStoreError, match="is not a run"):
        open_run(tmp_path / "file.txt")
    foreign = tmp_path / "foreign.zarr"
    xr.Dataset({"x": ("t", np.arange(3))}).to_zarr(foreign, zarr_format=3, consolidated=False)
    with pytest.raises(RunStoreError, match="no schema_version attribute"):
        open_run(foreign)
    assert isinstance(RunNotFoundError("x"), FileNotFoundError)


def test_missing_root_metadata_is_a_clear_error(tmp_path):
    run = _record(tmp_path / "run", 5)
    (run / "recording.zarr" / "zarr.json").unlink()
    with pytest.raises(RunStoreError, match=r"zarr.json is missing.*record the run again"):
        open_run(run)


def test_truncated_root_metadata_is_a_clear_error(tmp_path):
    run = _record(tmp_path / "run", 5)
    root = run / "recording.zarr" / "zarr.json"
    root.write_bytes(root.read_bytes()[:40])
    with pytest.raises(RunStoreError, match=f"run {run}: .*not valid JSON, the file is truncated"):
        open_run(run)
    [info] = list_runs(tmp_path)
    assert info.status == "broken" and "not valid JSON" in info.error


def _set_schema_version(run: Path, version: int) -> None:
    root = run / "recording.zarr" / "zarr.json"
    meta = json.loads(root.read_text())
    meta["attributes"]["schema_version"] = version
    root.write_text(json.dumps(meta))


def test_a_newer_schema_version_asks_for_an_upgrade(tmp_path):
    run = _record(tmp_path / "run", 5)
    _set_schema_version(run, SCHEMA_VERSION + 1)
    with pytest.raises(
        RunStoreError, match=f"schema_version={SCHEMA_VERSION + 1} .* upgrade attnres-probe"
    ):
        open_run(run)


@pytest.mark.parametrize("residual", ["full", "block", "baseline"])
def test_an_older_schema_says_where_a_variable_meant_something_else(tmp_path, residual):
    # Schema 1 counted the AttnRes pseudo-queries in a layer's parameter-gradient norm.
    run = tmp_path / residual
    variables, coords = {"param_grad_norm": ("step", "layer")}, {"layer": np.arange(2)}
    with RunWriter(run, variables, coords, {"residual": residual}) as w:
        w.append(0, {"param_grad_norm": np.ones(2)})
    assert "note" not in open_run(run)["param_grad_norm"].attrs
    _set_schema_version(run, 1)
    note = open_run(run)["param_grad_norm"].attrs.get("note", "")
    assert ("pseudo-queries" in note) == (residual != "baseline")


# ----------------------------------------------------------------------------- damaged data


def test_a_deleted_chunk_reads_as_nan_and_says_what_it_dropped(tmp_path):
    run = _record(tmp_path / "run", 30, flush_every=5, chunk_steps=10)
    (run / "recording.zarr" / "hidden_rms" / "c.1.0").unlink()
    with pytest.warns(RunStoreWarning, match="hidden_rms: chunk.s. missing at step index 10–19"):
        ds = open_run(run)
    assert "hidden_rms" in ds.attrs["dropped"]
    assert np.isnan(ds["hidden_rms"].values[10:20]).all()
    np.testing.assert_array_equal(
        ds["hidden_rms"].values[20:], np.arange(20, 30)[:, None] + np.arange(4)
    )
    assert ds["loss"].values.tolist() == list(range(30))
    assert "hidden_rms: chunk(s) missing" in str(repair(run))
    lazy = _read_quietly(run, lazy=True)
    (run / "recording.zarr" / "loss" / "c.2").unlink()  # deleted after the run was opened
    with pytest.warns(RunStoreWarning, match="loss: chunk.s. missing at step index 20–29"):
        assert np.isnan(lazy["loss"].values[20:]).all()


def test_a_corrupt_chunk_is_detected_instead_of_read_as_numbers(tmp_path):
    run = _record(tmp_path / "run", 30, flush_every=5, chunk_steps=10)
    chunk = run / "recording.zarr" / "depth_weights" / "c.2.0.0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x40
    chunk.write_bytes(bytes(data))
    with pytest.warns(RunStoreWarning, match="depth_weights: damaged chunk.s. at step index 20–29"):
        ds = open_run(run)
    assert np.isnan(ds["depth_weights"].values[20:]).all()
    np.testing.assert_allclose(
        ds["depth_weights"].values[:20, 0, 0], np.arange(20) / 100, rtol=1e-6
    )
    lazy = open_run(run, lazy=True)
    with pytest.warns(RunStoreWarning, match="depth_weights: damaged chunk.s. at step index 20–29"):
        tail = lazy["depth_weights"].isel(step=slice(15, 30)).values
    assert np.isnan(tail[5:]).all() and tail[0, 0, 0] == np.float32(0.15)


def test_a_corrupt_chunk_in_an_fsspec_store_is_detected_too():
    url = f"memory://runs-{uuid.uuid4().hex}/run"
    _record(url, 30, flush_every=5, chunk_steps=10)
    fs = fsspec.filesystem("memory")
    chunk = f"{url.removeprefix('memory://')}/recording.zarr/hidden_rms/c.1.0"
    data = bytearray(fs.cat_file(chunk))
    data[7] ^= 0x01
    fs.pipe_file(chunk, bytes(data))
    with pytest.warns(RunStoreWarning, match="hidden_rms: damaged chunk.s. at step index 10–19"):
        ds = open_run(url)
    assert np.isnan(ds["hidden_rms"].values[10:20]).all()
    assert ds["hidden_rms"].values[25, 1] == 26.0


def test_a_damaged_step_coordinate_drops_the_steps_after_the_damage(tmp_path):
    run = _record(tmp_path / "run", 30, flush_every=5, chunk_steps=10)
    chunk = run / "recording.zarr" / "step" / "c.1"
    chunk.write_bytes(chunk.read_bytes()[:-3])
    with pytest.warns(RunStoreWarning, match="steps 10–29: dropped"):
        ds = open_run(run)
    assert _check_prefix(ds) == 10


def test_an_array_shorter_than_the_marker_is_padded_and_reported(tmp_path):
    run = _record(tmp_path / "run", 12)
    arr_meta = run / "recording.zarr" / "hidden_rms" / "zarr.json"
    meta = json.loads(arr_meta.read_text())
    meta["shape"][0] = 9
    arr_meta.write_text(json.dumps(meta))
    with pytest.warns(RunStoreWarning, match="hidden_rms: steps 9–11 are missing on disk"):
        ds = open_run(run)
    assert np.isnan(ds["hidden_rms"].values[9:]).all() and ds.sizes["step"] == 12
    assert repair(run).padded == {"hidden_rms": (9, 12)}
    assert xr.open_zarr(run / "recording.zarr", consolidated=False).sizes["step"] == 12


def test_an_unreadable_array_is_left_out_and_the_rest_is_read(tmp_path):
    run = _record(tmp_path / "run", 6)
    (run / "recording.zarr" / "depth_weights" / "zarr.json").write_text("{not json")
    with pytest.warns(RunStoreWarning, match="depth_weights: left out"):
        ds = open_run(run)
    assert "depth_weights" not in ds and ds["loss"].values.tolist() == list(range(6))


def test_leftover_temp_files_are_neither_read_nor_a_problem(tmp_path):
    run = _record(tmp_path / "run", 30, flush_every=5, chunk_steps=10)
    store = run / "recording.zarr"
    chunk = store / "hidden_rms" / "c.1.0"
    good = chunk.read_bytes()
    chunk.unlink()  # its atomic rewrite died: only the temp file is left
    (store / "hidden_rms" / "c.1.0.3f2a9c.partial").write_bytes(good)
    (store / "loss" / "c.3.77aa01.partial").write_bytes(b"half a chunk")  # zarr's temp name
    (store / "loss" / "c.0.5e5e.partial").write_bytes(b"\0" * 44)
    newer = json.loads((store / "zarr.json").read_text())
    newer["attributes"]["n_steps"] = 40  # an uncommitted marker in a temp file
    (store / "zarr.9c1e2b.partial").write_text(json.dumps(newer))
    (store / "depth_weights" / "zarr.0d0d.partial").write_bytes(b'{"sha')

    with pytest.warns(RunStoreWarning) as caught:
        ds = open_run(run)
    assert [str(w.message).count("hidden_rms: chunk(s) missing") for w in caught] == [1]
    assert ds.attrs["dropped"] == "hidden_rms: chunk(s) missing at step index 10–19, read as NaN"
    assert np.isnan(ds["hidden_rms"].values[10:20]).all()  # the temp file is not the chunk
    assert ds.attrs["n_steps"] == 30 and ds.attrs["status"] == "finished"
    assert ds["loss"].values.tolist() == list(range(30))
    np.testing.assert_allclose(ds["depth_weights"].values[:, 0, 0], np.arange(30) / 100, rtol=1e-6)
    [info] = list_runs(tmp_path)
    assert info.status == "finished"

    report = repair(run)
    assert len(report.removed) == 5 and not list(store.rglob("*.partial"))
    chunk.write_bytes(good)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check_prefix(open_run(run), at_least=30)


GROUP_META = b'{"zarr_format": 3, "node_type": "group", "attributes": {}}'


MISSING = "left out, its zarr.json is missing"
NOT_JSON = "left out, its zarr.json is not valid JSON (truncated or corrupt)"
NOT_ARRAY = "left out, its zarr.json is not usable array metadata"


@pytest.mark.parametrize(
    "name,damage,note",
    [
        pytest.param("hidden_rms", None, MISSING, id="missing"),
        pytest.param("hidden_rms", b"", NOT_JSON, id="empty"),
        pytest.param("hidden_rms", b'{"zarr_format": 3, "node_ty', NOT_JSON, id="truncated"),
        pytest.param("hidden_rms", {"zarr_format": 2}, NOT_ARRAY, id="v2"),
        pytest.param("hidden_rms", {"data_type": "float99"}, NOT_ARRAY, id="dtype"),
        pytest.param("hidden_rms", {"shape": [-3, 4]}, NOT_ARRAY, id="shape"),
        pytest.param(
            "hidden_rms",
            {"dimension_names": None},
            "left out, it has no usable dimension names",
            id="no-dims",
        ),
        pytest.param(
            "hidden_rms",
            GROUP_META,
            "left out, its zarr.json describes a group, not an array",
            id="group",
        ),
        pytest.param(
            "step",
            None,
            "the step coordinate is missing, steps are numbered by position",
            id="step",
        ),
        pytest.param("sublayer", b"\xff\xfe", NOT_JSON, id="coordinate-binary"),
    ],
)
def test_a_damaged_array_metadata_file_leaves_that_array_out_and_says_so(
    tmp_path, name, damage, note
):
    run = _record(tmp_path / "run", 12)
    meta = run / "recording.zarr" / name / "zarr.json"
    if damage is None:
        meta.unlink()
    elif isinstance(damage, bytes):
        meta.write_bytes(damage)
    else:
        doc = json.loads(meta.read_text())
        doc.update(damage)
        meta.write_text(json.dumps(doc))
    note = f"{name}: {note}"
    with pytest.warns(RunStoreWarning, match=f"run {run} was read in part: .*{re.escape(note)}"):
        ds = open_run(run)
    assert name not in ds.variables
    assert note in ds.attrs["dropped"]
    assert ds.sizes["step"] == 12 and ds["loss"].values.tolist() == list(range(12))
    if name != "step":
        assert ds["step"].values.tolist() == list(range(12))
    report = repair(run)  # repair cannot rebuild metadata: it says so and changes nothing
    assert report.n_steps == 12 and not report.trimmed
    if damage is None or (isinstance(damage, bytes) and damage != GROUP_META):
        assert any(p.startswith(f"{name}: its zarr.json is") for p in report.problems)


@pytest.mark.parametrize(
    "damage",
    [None, b'{"zarr_format": 3, "node_ty', {"dimension_names": None}, GROUP_META],
    ids=["missing", "half-written", "no-dims", "group"],
)
def test_array_metadata_still_being_written_before_the_first_commit_is_no_loss(tmp_path, damage):
    """A reader can look while the writer creates its arrays (zarr.json not there yet, or
    half written): nothing is committed, so nothing is lost and nothing is reported."""
    run = tmp_path / "run"
    writer = RunWriter(run, VARIABLES, COORDS, {"residual": "full"}, 4)  # open: running
    meta = run / "recording.zarr" / "hidden_rms" / "zarr.json"
    if damage is None:
        meta.unlink()
    elif isinstance(damage, bytes):
        meta.write_bytes(damage)
    else:
        meta.write_text(json.dumps({**json.loads(meta.read_text()), **damage}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RunStoreWarning)
        ds = open_run(run)
    assert ds.attrs["status"] == "running" and ds.attrs["n_steps"] == 0
    assert "dropped" not in ds.attrs
    writer.close()


# ----------------------------------------------------------------------------- failing disk


class FlakyMemoryFileSystem(MemoryFileSystem):
    """In-memory files whose writes fail while ``failing`` is set (a full disk)."""

    protocol = "flakymem"
    failing = False
    failed_writes = 0

    def _fail(self) -> None:
        FlakyMemoryFileSystem.failed_writes += 1
        raise OSError(28, "No space left on device")

    def pipe_file(self, path, value, *args, **kwargs):
        if FlakyMemoryFileSystem.failing:
            self._fail()
        return super().pipe_file(path, value, *args, **kwargs)

    def open(self, path, mode="rb", *args, **kwargs):
        if FlakyMemoryFileSystem.failing and "w" in mode:
            self._fail()
        return super().open(path, mode, *args, **kwargs)


def test_a_failing_filesystem_keeps_the_last_good_flush_and_recovers(monkeypatch):
    fsspec.register_implementation("flakymem", FlakyMemoryFileSystem, clobber=True)
    url = f"flakymem://runs-{uuid.uuid4().hex}/run"
    w = RunWriter(url, VARIABLES, COORDS, flush_every=4)
    for s in range(8):
        w.append(s, _values(s))
    monkeypatch.setattr(FlakyMemoryFileSystem, "failing", True)
    for s in range(8, 11):
        w.append(s, _values(s))
    with pytest.raises(RunStoreError, match="writing steps 8–11 failed .*No space left on device"):
        w.append(11, _values(11))
    monkeypatch.setattr(FlakyMemoryFileSystem, "failing", False)
    assert _check_prefix(open_run(url)) == 8  # the store kept the last good flush
    w.flush()
    for s in range(12, 14):
        w.append(s, _values(s))
    w.close()
    assert _check_prefix(open_run(url)) == 14


def test_a_failing_filesystem_is_tried_once_per_flush_not_at_every_step(monkeypatch):
    fsspec.register_implementation("flakymem", FlakyMemoryFileSystem, clobber=True)
    url = f"flakymem://runs-{uuid.uuid4().hex}/run"
    w = RunWriter(url, VARIABLES, COORDS, flush_every=4, chunk_steps=8)
    for s in range(4):
        w.append(s, _values(s))
    monkeypatch.setattr(FlakyMemoryFileSystem, "failed_writes", 0)
    monkeypatch.setattr(FlakyMemoryFileSystem, "failing", True)
    tried_at, refused = [], []
    for s in range(4, 20):
        before = FlakyMemoryFileSystem.failed_writes
        try:
            w.append(s, _values(s))
        except RunStoreError as err:
            refused.append(s)
            if "dropped" in str(err):
                assert f"step {s} dropped: the buffer holds a whole chunk" in str(err)
        if FlakyMemoryFileSystem.failed_writes > before:
            tried_at.append(s)
    assert tried_at == [7, 11, 15, 19]  # once per flush_every steps
    assert refused == list(range(7, 20))  # the chunk (steps 0–7) is full and unwritten
    monkeypatch.setattr(FlakyMemoryFileSystem, "failing", False)
    w.flush()  # an explicit flush always tries
    for s in range(20, 24):
        w.append(s, _values(s))
    w.close()
    ds = open_run(url)
    assert ds["step"].values.tolist() == [*range(8), *range(20, 24)]
    assert ds["loss"].values.tolist() == [*range(8), *range(20, 24)]


# ----------------------------------------------------------------------------- fuzzing


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, list[str], xr.Dataset]:
    run = _record(tmp_path_factory.mktemp("fuzz") / "run", 20, flush_every=5, chunk_steps=10)
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    return run, files, open_run(run)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_damaged_bytes_give_our_error_or_data_that_says_what_it_lost(pristine, data):
    run, files, original = pristine
    target = data.draw(st.sampled_from(files), label="file")
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "run"
        shutil.copytree(run, copy)
        path = copy / target
        raw = bytearray(path.read_bytes())
        if data.draw(st.booleans(), label="truncate") or not raw:
            raw = raw[: data.draw(st.integers(0, max(0, len(raw) - 1)), label="length")]
        else:
            for _ in range(data.draw(st.integers(1, 3), label="flips")):
                at = data.draw(st.integers(0, len(raw) - 1), label="at")
                raw[at] ^= data.draw(st.integers(1, 255), label="xor")
        path.write_bytes(bytes(raw))
        try:
            ds = _read_quietly(copy)
        except RunStoreError as err:
            assert str(err).startswith(f"run {copy}")
            return
        ds.load()  # every variable it returned is readable
        dropped = ds.attrs.get("dropped", "")
        if "/c." in target or target.endswith("/c"):  # damaged data: caught by the checksum
            name = target.split("/")[1]
            if name in ds and name not in dropped and not dropped.startswith("steps"):
                kept = ds[name]
                if "step" in kept.dims:
                    kept = kept.isel(step=slice(0, original.sizes["step"]))
                xr.testing.assert_equal(kept.variable, original[name].variable)
        if ds.sizes.get("step", 0) > original.sizes["step"]:
            assert dropped  # steps beyond the real ones only with a note
