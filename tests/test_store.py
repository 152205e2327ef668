"""The run store: what is written is what is read, while a run is written and after."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
import warnings

import numpy as np
import pytest
import xarray as xr

from attnres_probe.store import (
    SCHEMA_VARIABLES,
    SCHEMA_VERSION,
    RunStoreError,
    RunWriter,
    list_runs,
    open_run,
    run_config,
    schema_coords,
    store_version,
    write_static_variables,
)

N_LAYERS = 2
SOURCES = ["emb", "L0.attn", "L0.mlp", "L1.attn", "L1.mlp"]
MODEL_CONFIG = {"residual": "full", "n_layers": N_LAYERS, "d_model": 16}


def _attrs(**extra):
    return {
        "model_config": json.dumps(MODEL_CONFIG),
        "residual": "full",
        "n_layers": N_LAYERS,
        **extra,
    }


def _values(step: int) -> dict[str, np.ndarray]:
    """A full-schema step whose every value is a known function of ``step``."""
    rng = np.random.default_rng(step)
    sizes = {"sublayer": 2 * N_LAYERS, "layer": N_LAYERS, "source": len(SOURCES)}
    values = {
        name: rng.random([sizes[d] for d in dims[1:]]).astype(np.float32)
        for name, dims in SCHEMA_VARIABLES.items()
    }
    values["depth_weights"][np.triu_indices(2 * N_LAYERS, 1, len(SOURCES))] = np.nan
    values["loss"] = np.float32(5.0 - 0.01 * step)
    values["nonfinite"] = np.float32(step % 3)
    return values


def _writer(path, **kwargs) -> RunWriter:
    kwargs.setdefault("flush_every", 4)
    return RunWriter(path, SCHEMA_VARIABLES, schema_coords(N_LAYERS, SOURCES), _attrs(), **kwargs)


def _record(path, steps, **kwargs) -> None:
    with _writer(path, **kwargs) as w:
        for s in steps:
            w.append(s, _values(s))


def _expected(steps) -> dict[str, np.ndarray]:
    rows = [_values(s) for s in steps]
    return {name: np.stack([r[name] for r in rows]) for name in SCHEMA_VARIABLES}


def test_round_trip_keeps_every_variable_coordinate_and_attribute(tmp_path):
    steps = list(range(0, 100, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no zarr / xarray warnings on the happy path
        _record(tmp_path / "run", steps)
        ds = open_run(tmp_path / "run")
    for name, values in _expected(steps).items():
        assert ds[name].dims == SCHEMA_VARIABLES[name]
        assert ds[name].dtype == np.float32
        np.testing.assert_array_equal(ds[name].values, values)
    assert ds["step"].values.tolist() == steps and ds["step"].dtype == np.int64
    assert ds["kind"].values.tolist() == ["attn", "mlp", "attn", "mlp"]
    assert ds["layer_of"].values.tolist() == [0, 0, 1, 1]
    assert ds["source"].values.tolist() == SOURCES and ds["source"].dtype == object
    assert set(ds.coords) == {"step", "sublayer", "kind", "layer_of", "layer", "source"}
    assert ds.attrs["schema_version"] == SCHEMA_VERSION and ds.attrs["status"] == "finished"
    assert ds.attrs["run_name"] == "run" and ds.attrs["n_steps"] == len(steps)
    assert ds.attrs["residual"] == "full" and ds.attrs["n_layers"] == N_LAYERS
    assert "zarr" in json.loads(ds.attrs["versions"])
    assert run_config(ds) == MODEL_CONFIG
    assert "dropped" not in ds.attrs


def test_many_appends_with_odd_flushes_read_back_exactly(tmp_path):
    steps = list(range(600))
    with _writer(tmp_path / "run", flush_every=13, chunk_steps=52) as w:
        for s in steps:
            w.append(s, _values(s))
            if s % 97 == 0:
                w.flush()  # an extra flush in the middle of a chunk
    ds = open_run(tmp_path / "run")
    assert ds.sizes["step"] == 600
    for name, values in _expected(steps).items():
        np.testing.assert_array_equal(ds[name].values, values, err_msg=name)


def test_missing_variables_are_nan_and_non_finite_values_are_kept(tmp_path):
    with _writer(tmp_path / "run") as w:
        w.append(0, {"loss": np.inf, "hidden_rms": [np.nan, -np.inf, 1.0, 2.0]})
        w.append(1, {})
    ds = open_run(tmp_path / "run")
    assert ds["loss"].values[0] == np.inf and np.isnan(ds["loss"].values[1])
    assert np.isnan(ds["hidden_rms"].values[0, 0]) and ds["hidden_rms"].values[0, 1] == -np.inf
    assert np.isnan(ds["depth_weights"].values).all()


def test_append_rejects_unknown_names_and_wrong_shapes(tmp_path):
    with _writer(tmp_path / "run") as w:
        with pytest.raises(RunStoreError, match="not a variable"):
            w.append(0, {"los": 1.0})
        with pytest.raises(RunStoreError, match=r"shape \(3,\), expected \(4,\)"):
            w.append(0, {"loss": 9.0, "hidden_rms": np.ones(3)})
        w.append(0, {"update_rms": np.ones(4)})
    ds = open_run(tmp_path / "run")
    assert ds.sizes["step"] == 1 and np.isnan(ds["loss"].values[0])  # nothing of the bad step


def test_writer_rejects_a_schema_it_cannot_store(tmp_path):
    with pytest.raises(RunStoreError, match="has no coordinate"):
        RunWriter(tmp_path / "a", {"x": ("step", "unit")})
    with pytest.raises(RunStoreError, match="'step' first"):
        RunWriter(tmp_path / "b", {"x": ("sublayer",)}, {"sublayer": [0, 1]})
    with pytest.raises(RunStoreError, match="flush_every"):
        RunWriter(tmp_path / "c", {}, flush_every=0)


def test_static_variables_sit_beside_the_steps_and_can_be_replaced(tmp_path):
    run = tmp_path / "run"
    with _writer(run) as w:
        w.append(0, _values(0))
        w.write_static(
            "prune_loss",
            ("unit",),
            np.array([3.0, 4.0]),
            coords={"unit": np.array(["L0", "L1"], dtype=object)},
        )
    ds = open_run(run)
    assert ds["prune_loss"].dims == ("unit",) and ds["unit"].values.tolist() == ["L0", "L1"]
    version = store_version(run)
    arrays = {
        "prune_unit_name": (("unit",), np.array(["L0", "L0.attn", "L0.mlp"], dtype=object)),
        "prune_loss": (("unit",), np.array([1.0, 2.0, 3.0], dtype=np.float32)),
        "prune_base_loss": ((), np.float32(0.5)),
    }
    write_static_variables(
        run,
        arrays,
        attrs={"batches": 8},
        coords={"unit": np.array(["a", "b", "c"], dtype=object)},
    )
    ds = open_run(run)
    assert store_version(run) != version  # dashboards see the new results
    assert ds["prune_unit_name"].values.tolist() == ["L0", "L0.attn", "L0.mlp"]
    assert ds["prune_loss"].values.tolist() == [1.0, 2.0, 3.0]
    assert ds["prune_loss"].attrs == {"batches": 8}
    assert float(ds["prune_base_loss"]) == 0.5 and ds["prune_base_loss"].dims == ()
    assert ds.sizes["step"] == 1
    with pytest.raises(RunStoreError, match="per-step"):
        write_static_variables(run, {"loss": (("unit",), np.ones(3))})
    with pytest.raises(RunStoreError, match="entries along 'sublayer'"):
        write_static_variables(run, {"bad": (("sublayer",), np.ones(3))})


def test_a_run_trained_without_the_probe_gets_a_store_for_static_results(tmp_path):
    (tmp_path / "run").mkdir()
    write_static_variables(tmp_path / "run", {"prune_loss": (("unit",), np.ones(2))})
    ds = open_run(tmp_path / "run")
    assert ds["prune_loss"].values.tolist() == [1.0, 1.0] and ds.attrs["n_steps"] == 0


def test_a_finished_run_opens_with_plain_xarray(tmp_path):
    _record(tmp_path / "run", range(10))
    ds = xr.open_zarr(tmp_path / "run" / "recording.zarr", consolidated=False, chunks=None)
    assert ds.sizes["step"] == 10 and "kind" in ds.coords
    np.testing.assert_array_equal(ds["loss"].values, _expected(range(10))["loss"])


def test_open_run_accepts_the_store_path_as_well_as_the_run_dir(tmp_path):
    _record(tmp_path / "run", range(3))
    by_dir = open_run(tmp_path / "run")
    by_store = open_run(str(tmp_path / "run" / "recording.zarr"))
    xr.testing.assert_identical(by_dir, by_store)


def test_memory_fsspec_url_round_trip():
    url = f"memory://runs-{uuid.uuid4().hex}/run"
    steps = list(range(9))
    _record(url, steps)
    ds = open_run(url)
    np.testing.assert_array_equal(ds["depth_weights"].values, _expected(steps)["depth_weights"])
    assert ds.attrs["status"] == "finished"
    infos = list_runs(url.rsplit("/", 1)[0])
    assert [(i.name, i.status, i.n_steps) for i in infos] == [("run", "finished", 9)]
    assert store_version(url).startswith("9-")


def test_lazy_variables_read_the_same_values_on_access(tmp_path):
    _record(tmp_path / "run", range(20))
    eager = open_run(tmp_path / "run", lazy=False)
    lazy = open_run(tmp_path / "run", lazy={"depth_weights"})
    assert not lazy["depth_weights"].variable._in_memory
    np.testing.assert_array_equal(
        lazy["depth_weights"].isel(step=[3, 7], source=slice(1, 3)).values,
        eager["depth_weights"].isel(step=[3, 7], source=slice(1, 3)).values,
    )
    weights = lazy["depth_weights"]
    for index in [-1, 0, slice(2, 9, 3), slice(None, None, -2), [5, 1, 19], slice(4, 4)]:
        np.testing.assert_array_equal(
            weights.isel(step=index).values, eager["depth_weights"].isel(step=index).values
        )
    xr.testing.assert_identical(lazy.load(), eager)


def test_an_error_inside_the_writer_block_keeps_the_steps_and_marks_the_run(tmp_path):
    with pytest.raises(KeyError), _writer(tmp_path / "run", flush_every=100) as w:
        for s in range(5):
            w.append(s, _values(s))
        raise KeyError("training crashed")
    ds = open_run(tmp_path / "run")
    assert ds.sizes["step"] == 5 and ds.attrs["status"] == "interrupted"


def test_resuming_appends_after_the_committed_steps(tmp_path):
    _record(tmp_path / "run", range(6))
    with _writer(tmp_path / "run", mode="a") as w:
        assert w.n_steps == 6
        for s in range(6, 11):
            w.append(s, _values(s))
    ds = open_run(tmp_path / "run")
    assert ds["step"].values.tolist() == list(range(11))
    np.testing.assert_array_equal(ds["hidden_rms"].values, _expected(range(11))["hidden_rms"])
    with pytest.raises(RunStoreError, match="already has a recording"):
        _writer(tmp_path / "run", mode="w-")


def test_a_second_writer_on_a_live_run_is_refused(tmp_path):
    with _writer(tmp_path / "run") as w:
        w.append(0, _values(0))
        with pytest.raises(RunStoreError, match="being written by process"):
            _writer(tmp_path / "run")


def test_list_runs_reports_every_run_and_a_broken_one_without_raising(tmp_path):
    _record(tmp_path / "done", range(4))
    live = _writer(tmp_path / "group" / "live")
    live.append(7, _values(7))
    live.flush()
    (tmp_path / "broken" / "recording.zarr").mkdir(parents=True)
    (tmp_path / "not_a_run").mkdir()
    try:
        infos = {i.name: i for i in list_runs(tmp_path)}
    finally:
        live.close()
    assert set(infos) == {"done", "group/live", "broken"}
    assert infos["done"].status == "finished" and infos["done"].n_steps == 4
    assert infos["done"].last_loss == pytest.approx(5.0 - 0.03)
    assert infos["done"].residual == "full" and infos["done"].n_layers == N_LAYERS
    assert infos["group/live"].status == "live" and infos["group/live"].last_step == 7
    assert infos["broken"].status == "broken" and "zarr.json is missing" in infos["broken"].error


def test_store_version_changes_with_each_commit_only(tmp_path):
    with _writer(tmp_path / "run", flush_every=2) as w:
        w.append(0, _values(0))
        first = store_version(tmp_path / "run")
        w.append(1, _values(1))  # flushes
        second = store_version(tmp_path / "run")
        assert store_version(tmp_path / "run") == second
    assert len({first, second, store_version(tmp_path / "run")}) == 3


# ----------------------------------------------------------------------------- live reading

WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from attnres_probe.store import RunWriter
    path, steps, flush_every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    coords = {"sublayer": np.arange(8), "source": np.array(list("abcdefghijklmnop"), object)}
    variables = {"loss": ("step",), "hidden_rms": ("step", "sublayer"),
                 "depth_weights": ("step", "sublayer", "source")}
    with RunWriter(path, variables, coords, {"residual": "full"}, flush_every=flush_every) as w:
        for s in range(steps):
            w.append(s, {"loss": s, "hidden_rms": np.full(8, s),
                         "depth_weights": np.full((8, 16), s)})
            if w.n_steps and s % flush_every == 0:
                print(w.n_steps, flush=True)
            time.sleep(0.002)
    """
)


def _start_writer(path, steps: int, flush_every: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(path), str(steps), str(flush_every)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _assert_complete_prefix(ds: xr.Dataset) -> int:
    n = ds.sizes.get("step", 0)
    if n == 0:  # the writer may still be creating its arrays: nothing committed yet
        return 0
    assert ds["step"].values.tolist() == list(range(n))
    expected = np.arange(n, dtype=np.float32)
    np.testing.assert_array_equal(ds["loss"].values, expected)
    np.testing.assert_array_equal(ds["hidden_rms"].values, np.repeat(expected[:, None], 8, 1))
    assert (ds["depth_weights"].values == expected[:, None, None]).all()
    return n


def test_a_reader_during_writing_sees_only_complete_steps_and_never_fails(tmp_path):
    run = tmp_path / "live"
    proc = _start_writer(run, steps=600, flush_every=5)
    sizes, deadline = [], time.monotonic() + 30
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                ds = open_run(run)
            except RunStoreError as err:  # only before the writer has created the store
                assert not sizes, err
                assert any(m in str(err) for m in ("does not exist", "holds no", "is missing"))
                continue
            assert "dropped" not in ds.attrs
            sizes.append(_assert_complete_prefix(ds))
    finally:
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert sizes == sorted(sizes) and len(set(sizes)) > 3  # it grew while we read
    assert _assert_complete_prefix(open_run(run)) == 600
