"""Analyses checked against hand-computed values on tiny recordings built in the run schema."""

from __future__ import annotations

import math

import numpy as np
import pytest
from synthetic_runs import FULL_WEIGHTS, baseline_run, full_run

from attnres_probe.analysis import depth, dilution, gradients
from attnres_probe.analysis.select import AnalysisError, snapshot, tail


def test_tail_keeps_the_last_tenth_of_steps_and_at_least_one():
    ds = baseline_run(n_steps=10)
    assert tail(ds, 0.1)["step"].values.tolist() == [90]
    assert tail(ds, 0.3)["step"].values.tolist() == [70, 80, 90]
    assert tail(baseline_run(n_steps=3), 0.1)["step"].values.tolist() == [20]


def test_snapshot_at_a_step_picks_the_nearest_recorded_step():
    ds = baseline_run(n_steps=10)
    one = snapshot(ds["hidden_rms"], step=41)
    assert one.values.tolist() == [5.0, 10.0, 15.0, 20.0]  # step 40 is row i = 4
    assert one.attrs["steps"] == "step 40 (step 41 was not recorded; the nearest recorded one)"
    assert snapshot(ds["hidden_rms"], step=40).attrs["steps"] == "step 40"


def test_relative_update_is_update_over_stream():
    rel = dilution.relative_update(baseline_run())
    np.testing.assert_allclose(rel.isel(step=0).values, [1, 1 / 2, 1 / 3, 1 / 4], rtol=1e-6)
    np.testing.assert_allclose(rel.isel(step=-1).values, [1 / 10, 1 / 20, 1 / 30, 1 / 40])


def test_linear_stream_growth_has_exponent_one_and_the_step_scaled_slope():
    over = dilution.growth_over_training(baseline_run())
    np.testing.assert_allclose(over["exponent"].values, 1.0, rtol=1e-6)
    np.testing.assert_allclose(over["linear_slope"].values, np.arange(1, 11), rtol=1e-6)
    np.testing.assert_allclose(over["last_first_ratio"].values, 4.0, rtol=1e-6)


def test_growth_over_a_window_fits_the_mean_profile_of_its_steps():
    g = dilution.growth(baseline_run(), fraction=0.3)  # rows i = 8, 9, 10 -> mean 9
    assert float(g["linear_slope"]) == pytest.approx(9.0)
    assert float(g["exponent"]) == pytest.approx(1.0)
    assert g.attrs["steps"] == "mean of steps 70–90 (3 recorded)"


def test_square_root_growth_has_exponent_one_half():
    ds = baseline_run(n_layers=4)
    ds["hidden_rms"] = np.sqrt(ds["hidden_rms"])
    over = dilution.growth_over_training(ds)
    np.testing.assert_allclose(over["exponent"].values, 0.5, rtol=1e-5)
    np.testing.assert_allclose(over["last_first_ratio"].values, math.sqrt(8), rtol=1e-5)


def test_growth_fit_ignores_missing_sublayers():
    ds = baseline_run()
    ds["hidden_rms"][:, 1] = np.nan
    g = dilution.growth(ds, step=0)
    assert float(g["exponent"]) == pytest.approx(1.0)
    assert float(g["linear_slope"]) == pytest.approx(1.0)


def test_available_sources_follow_the_nan_pattern():
    n = depth.n_available_sources(full_run(), include_output=True)
    assert n.values.tolist() == [1, 2, 3]


def test_mean_depth_weights_keep_nan_for_absent_sources_and_append_the_output_row():
    w = depth.mean_depth_weights(full_run(), include_output=True)
    assert w.dims == ("sublayer", "source")
    np.testing.assert_allclose(w.values[:2], FULL_WEIGHTS)
    np.testing.assert_allclose(w.values[2], [0.5, 0.25, 0.25])
    assert w["kind"].values.tolist() == ["attn", "mlp", "out"]


def test_depth_entropy_from_tokens_is_normalised_by_log_of_available_sources():
    e = depth.depth_entropy(full_run(), of="tokens").isel(step=-1)
    assert float(e["entropy"][1]) == pytest.approx(0.5)
    assert float(e["normalised_entropy"][1]) == pytest.approx(0.5 / math.log(2), rel=1e-6)
    assert math.isnan(float(e["normalised_entropy"][0]))  # one source: undefined
    assert float(e["effective_sources"][0]) == pytest.approx(1.0)
    assert float(e["effective_sources"][1]) == pytest.approx(math.exp(0.5), rel=1e-6)


def test_entropy_of_mean_weights_is_computed_from_the_weights():
    e = depth.depth_entropy(full_run(), of="mean", include_output=True).isel(step=0)
    h1 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    h_out = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    np.testing.assert_allclose(e["entropy"].values, [0.0, h1, h_out], rtol=1e-6)
    assert float(e["normalised_entropy"][2]) == pytest.approx(h_out / math.log(3), rel=1e-6)


def test_top_sources_rank_available_sources_by_weight():
    top = depth.top_sources(full_run(), k=3)
    assert top["source_name"].values[1].tolist() == ["L0.attn", "emb", ""]
    np.testing.assert_allclose(top["weight"].values[1, :2], [0.75, 0.25])
    assert math.isnan(float(top["weight"][1, 2]))
    assert depth.overall_top_sources(full_run(), k=1) == [("emb", pytest.approx(0.625))]


def test_depth_weights_of_one_sublayer_drop_absent_sources():
    one = depth.depth_weights_of(full_run(), 1)
    assert one["source"].values.tolist() == ["emb", "L0.attn"]
    assert one.sizes["step"] == 4


def test_depth_analysis_of_a_baseline_run_says_there_are_no_weights():
    with pytest.raises(AnalysisError, match="baseline runs have no depth weights"):
        depth.mean_depth_weights(baseline_run())


def test_gradient_spread_is_cv_and_max_over_min_across_depth():
    s = gradients.gradient_spread(baseline_run())  # profile ∝ [1, 2, 3, 4]
    np.testing.assert_allclose(s["cv"].values, math.sqrt(1.25) / 2.5, rtol=1e-6)
    np.testing.assert_allclose(s["max_over_min"].values, 4.0, rtol=1e-6)


def test_gradient_profile_over_the_window_is_the_mean_of_its_steps():
    p = gradients.gradient_profile(baseline_run(), fraction=0.2)  # rows i = 9, 10
    np.testing.assert_allclose(p.values, 9.5 * np.arange(1, 5), rtol=1e-6)
    summary = gradients.gradient_spread_summary(full_run())
    assert float(summary["cv"]) == pytest.approx(0.5 / 1.5)
    assert float(summary["max_over_min"]) == pytest.approx(2.0)


def test_parameter_gradient_spread_runs_over_layers():
    s = gradients.gradient_spread_summary(baseline_run(), variable="param_grad_norm")
    assert float(s["cv"]) == 0.0
    with pytest.raises(AnalysisError, match="not a gradient variable"):
        gradients.gradient_spread(baseline_run(), variable="loss")


def test_missing_variable_error_names_it():
    ds = baseline_run().drop_vars("update_rms")
    with pytest.raises(AnalysisError, match="'update_rms'"):
        dilution.relative_update(ds)
