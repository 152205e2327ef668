"""Step labels: strictly increasing at the writer; a damaged step coordinate or commit marker is
read as what it is (a partial read that says so, or our error), never as wrong labels."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from attnres_probe.cli import app
from attnres_probe.models.config import ModelConfig
from attnres_probe.store import RunStoreError, RunStoreWarning, RunWriter, open_run
from attnres_probe.store.synthetic import write_run

DAMAGED = [0, 5, 5, 3, 6, 7, 8, 9]  # what the writer accepted before steps were checked


def _writer(path, flush_every: int = 2) -> RunWriter:
    return RunWriter(path, {"loss": ("step",)}, flush_every=flush_every)


def test_the_writer_refuses_a_step_that_does_not_follow_the_last_one(tmp_path):
    with _writer(tmp_path / "run") as w:
        w.append(0, {"loss": 0.0})
        w.append(np.int64(5), {"loss": 5.0})  # numpy integers are step numbers too
        with pytest.raises(RunStoreError, match="step 5 does not follow step 5, the last one"):
            w.append(5, {"loss": 9.0})
        with pytest.raises(RunStoreError, match="step 3 does not follow step 5, the last one"):
            w.append(3, {"loss": 9.0})
        for bad, why in [(-1, "step -1 is negative"), (2.5, "2.5 is not an integer")]:
            with pytest.raises(RunStoreError, match=why):
                w.append(bad, {"loss": 9.0})
        with pytest.raises(RunStoreError, match="True is not an integer"):
            w.append(True, {"loss": 9.0})
        w.append(6, {"loss": 6.0})
    ds = open_run(tmp_path / "run")
    assert ds["step"].values.tolist() == [0, 5, 6]
    assert ds["loss"].values.tolist() == [0.0, 5.0, 6.0]


def test_a_resumed_run_continues_after_its_last_stored_step(tmp_path):
    with _writer(tmp_path / "run", flush_every=3) as w:
        for s in range(0, 20, 2):
            w.append(s, {"loss": s})
    with RunWriter(tmp_path / "run", {"loss": ("step",)}, flush_every=3, mode="a") as w:
        with pytest.raises(RunStoreError, match="step 18 does not follow step 18"):
            w.append(18, {"loss": 0.0})
        w.append(19, {"loss": 19.0})
    assert open_run(tmp_path / "run")["step"].values.tolist() == [*range(0, 20, 2), 19]


def _damage_steps(run: Path, labels: list[int]) -> None:
    """Rewrite the stored step coordinate, as a buggy or edited writer would leave it."""
    steps = zarr.open_array(run / "recording.zarr" / "step", mode="r+")
    steps[: len(labels)] = np.asarray(labels)


def _damaged_run(run: Path) -> Path:
    cfg = ModelConfig(residual="baseline", n_layers=2, d_model=16, n_heads=2)
    write_run(run, cfg, n_steps=len(DAMAGED))
    _damage_steps(run, DAMAGED)
    return run


def test_a_step_coordinate_that_is_not_increasing_is_read_up_to_the_damage(tmp_path):
    run = _damaged_run(tmp_path / "run")
    with pytest.warns(RunStoreWarning) as caught:
        ds = open_run(run)
    (message,) = [str(w.message) for w in caught]
    assert "steps 2–7: dropped, the step coordinate is not strictly increasing there" in message
    assert "(step 5 after step 5)" in message
    assert ds["step"].values.tolist() == [0, 5]
    assert ds.sizes["step"] == 2 and ds["hidden_rms"].shape[0] == 2
    assert float(ds["loss"].sel(step=5)) == float(ds["loss"][1])  # labels usable again


@pytest.mark.filterwarnings("ignore::attnres_probe.store.RunStoreWarning")
def test_export_and_info_of_a_run_with_a_damaged_step_coordinate_work_and_say_so(tmp_path):
    run = _damaged_run(tmp_path / "run")
    runner = CliRunner()
    out = tmp_path / "dilution.json"
    exported = runner.invoke(
        app, ["export", str(run), "--figure", "dilution", "--step", "5", "--out", str(out)]
    )
    assert exported.exit_code == 0, exported.output
    assert "InvalidIndexError" not in exported.output and out.is_file()

    shown = runner.invoke(app, ["info", str(run)])
    assert shown.exit_code == 0, shown.output
    assert "2 (steps 0–5)" in shown.stdout
    assert shown.stderr.splitlines() == [
        f"warning: run {run} was read in part: steps 2–7: dropped, the step coordinate is not "
        "strictly increasing there (step 5 after step 5)"
    ]


@pytest.mark.filterwarnings("ignore::attnres_probe.store.RunStoreWarning")
@pytest.mark.parametrize("page", ["dilution", "gradients"])
def test_dashboard_pages_of_a_run_with_a_damaged_step_coordinate_draw(tmp_path, monkeypatch, page):
    from streamlit.testing.v1 import AppTest

    from attnres_probe.app.confine import ROOT_ENV

    _damaged_run(tmp_path / "damaged")
    monkeypatch.setenv(ROOT_ENV, str(tmp_path))
    dashboard = Path(__file__).resolve().parents[1] / "app" / "dashboard.py"
    at = AppTest.from_file(str(dashboard), default_timeout=60)
    at.query_params["run"] = "damaged"
    at.run()
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.get("plotly_chart")  # the page drew its figures


# ----------------------------------------------------------------------------- commit marker


def _set_marker(run: Path, value) -> None:
    path = run / "recording.zarr" / "zarr.json"
    meta = json.loads(path.read_text())
    meta["attributes"]["n_steps"] = value
    path.write_text(json.dumps(meta))


def test_a_commit_marker_counting_unwritten_steps_never_labels_rows_minus_one(tmp_path):
    run = tmp_path / "run"
    w = _writer(run)  # left open: its arrays reach past the committed steps, as while live
    for s in range(6):
        w.append(s, {"loss": float(s)})
    _set_marker(run, 9)
    with pytest.warns(RunStoreWarning, match="n_steps=9 counts steps that were never written"):
        ds = open_run(run)
    assert ds["step"].values.tolist() == list(range(6))
    assert ds["loss"].values.tolist() == [float(s) for s in range(6)]


@pytest.mark.parametrize(
    "marker,why",
    [
        (10**15, "n_steps=1000000000000000 is over 1e\\+12 steps"),
        (10**30, f"n_steps={10**30} is over 1e\\+12 steps"),
        (-3, "n_steps=-3 is not a step count"),
        (2.5, "n_steps=2.5 is not a step count"),
        ("7", "n_steps='7' is not a step count"),
        (True, "n_steps=True is not a step count"),
    ],
)
def test_a_commit_marker_that_is_no_plausible_step_count_is_a_clear_error(tmp_path, marker, why):
    run = tmp_path / "run"
    with _writer(run) as w:
        for s in range(6):
            w.append(s, {"loss": float(s)})
    _set_marker(run, marker)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an error, not a partial read
        with pytest.raises(RunStoreError, match=f"run {run}: its commit marker {why}"):
            open_run(run)
