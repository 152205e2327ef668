"""Figures: each builds from runs and its JSON holds the data the analyses compute."""

from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go
import pytest
from synthetic_runs import FULL_WEIGHTS, FULL_WEIGHTS_OUT, baseline_run, decode, full_run, traces

from attnres_probe import figures
from attnres_probe.analysis import pruning
from attnres_probe.analysis.select import AnalysisError


def with_pruning(ds, increases, base=2.0):
    rows = pruning.units(ds.attrs["residual"], int(ds.attrs["n_layers"]), 4, "layer")
    res = pruning.results_dataset(rows, "layer", list(base + np.asarray(increases)), base, {})
    ds = ds.copy()
    for name, (dims, arr) in pruning.stored_arrays(res).items():
        ds[name] = (dims, arr)
    return ds


def test_every_registered_figure_builds_and_round_trips_through_json():
    runs = {"base": with_pruning(baseline_run(), [0.5, 0.1]), "full": full_run()}
    for name in figures.FIGURES:
        fig = figures.make_figure(name, runs)
        assert fig.data, name
        assert fig.layout.title.text, name
        assert go.Figure(json.loads(fig.to_json())).to_dict()["data"], name


def test_dilution_draws_the_tail_mean_stream_rms_of_each_run():
    fig = figures.dilution([baseline_run(), full_run()], fraction=0.2)
    data = traces(fig)
    assert [d["name"].split(" (")[0] for d in data] == ["base", "full"]
    np.testing.assert_allclose(decode(data[0]["y"]), 9.5 * np.arange(1, 5), rtol=1e-6)
    np.testing.assert_allclose(decode(data[0]["x"]), [0, 1, 2, 3])
    assert "exponent 1.00" in data[0]["name"]
    assert "exponent 0.00" in data[1]["name"]
    assert fig.layout.yaxis.title.text.startswith("RMS")


def test_dilution_at_several_steps_draws_one_line_per_step():
    data = traces(figures.dilution(baseline_run(), steps=[0, 90]))
    assert len(data) == 2
    np.testing.assert_allclose(decode(data[0]["y"]), [1, 2, 3, 4])
    np.testing.assert_allclose(decode(data[1]["y"]), [10, 20, 30, 40])
    assert data[0]["line"]["dash"] != data[1]["line"]["dash"]


def test_a_run_keeps_its_colour_across_figures_and_runs_differ():
    runs = [baseline_run(), full_run()]
    dil = traces(figures.dilution(runs))
    loss = traces(figures.loss(runs))
    assert [d["line"]["color"] for d in dil] == [d["line"]["color"] for d in loss]
    assert dil[0]["line"]["color"] != dil[1]["line"]["color"]
    assert set(figures.run_colours(["base", "full"]).values()) <= set(figures.OKABE_ITO)


def test_relative_update_uses_a_log_axis_and_the_ratio():
    fig = figures.relative_update(baseline_run(), step=0)
    np.testing.assert_allclose(decode(traces(fig)[0]["y"]), [1, 1 / 2, 1 / 3, 1 / 4], rtol=1e-6)
    assert fig.layout.yaxis.type == "log"


def test_depth_heatmap_shows_weights_with_the_output_row_and_skips_baselines():
    fig = figures.depth_heatmap({"b": baseline_run(), "f": full_run()})
    (heat,) = traces(fig)
    z = decode(heat["z"]).astype(float)
    np.testing.assert_allclose(z[:2], FULL_WEIGHTS)
    np.testing.assert_allclose(z[2], FULL_WEIGHTS_OUT)
    assert list(heat["y"]) == ["L0.attn", "L0.mlp", "out"]
    assert list(heat["x"]) == ["emb", "L0.attn", "L0.mlp"]
    assert "no depth weights: b" in fig.layout.title.text
    with pytest.raises(AnalysisError, match="needs a full or block AttnRes run"):
        figures.depth_heatmap(baseline_run())


def test_depth_heatmaps_of_several_runs_sit_side_by_side():
    fig = figures.depth_heatmap({"a": full_run(), "b": full_run()})
    data = traces(fig)
    assert [d["xaxis"] for d in data] == ["x", "x2"]
    assert all(d["coloraxis"] == "coloraxis" for d in data)


def test_depth_entropy_plots_normalised_entropy_with_effective_sources_on_hover():
    (line,) = traces(figures.depth_entropy(full_run()))
    y = decode(line["y"]).astype(float)
    assert np.isnan(y[0])
    assert y[1] == pytest.approx(0.5 / np.log(2), rel=1e-6)
    assert y[2] == pytest.approx(1.0 / np.log(3), rel=1e-6)
    assert "effective sources" in line["hovertemplate"]


def test_grad_depth_reports_the_spread_in_the_legend():
    (line,) = traces(figures.grad_depth(full_run()))
    np.testing.assert_allclose(decode(line["y"]), [1, 2])
    assert "CV 0.33, max/min 2.00" in line["name"]


def test_pruning_figure_plots_measured_increase_against_each_proxy():
    ds = with_pruning(baseline_run(), [0.5, 0.1])
    data = traces(figures.pruning(ds))
    bars, bi, rel = data
    assert bars["type"] == "bar"
    np.testing.assert_allclose(decode(bars["y"]), [0.5, 0.1], rtol=1e-6)
    np.testing.assert_allclose(decode(bi["x"]), [0.1, 0.2], rtol=1e-6)  # 1 − cos
    np.testing.assert_allclose(decode(rel["x"]), [1.5 / 10, 0.35 / 6], rtol=1e-5)
    assert list(bi["text"]) == ["L0", "L1"]
    with pytest.raises(AnalysisError, match="no pruning results"):
        figures.pruning(baseline_run())


def test_loss_figure_draws_every_recorded_step():
    (line,) = traces(figures.loss(baseline_run()))
    np.testing.assert_allclose(decode(line["x"]), np.arange(10) * 10)
    np.testing.assert_allclose(decode(line["y"]), 5 - 0.1 * np.arange(10), rtol=1e-6)


def test_unknown_figure_names_the_choices():
    with pytest.raises(AnalysisError, match="pick one of dilution"):
        figures.make_figure("nope", baseline_run())


# ----------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def real_runs():
    from synthetic_runs import trained_runs

    from attnres_probe.store import open_run

    return {name: open_run(path) for name, path in trained_runs().items()}


def test_figures_of_real_runs_carry_the_recorded_numbers(real_runs):
    from attnres_probe.analysis import depth, dilution, gradients

    base, full = real_runs["baseline"], real_runs["full"]
    assert base.sizes["step"] == 30
    dil = traces(figures.dilution(real_runs))
    for trace, ds in zip(dil, (base, full), strict=True):
        expected = dilution.growth(ds)["profile"].values
        np.testing.assert_allclose(decode(trace["y"]), expected, rtol=1e-6)
    (heat,) = traces(figures.depth_heatmap(real_runs, step=29))
    w = depth.mean_depth_weights(full, step=29, include_output=True).values
    np.testing.assert_allclose(decode(heat["z"]).astype(float), w, rtol=1e-6)
    rows = np.nansum(decode(heat["z"]).astype(float), axis=1)
    np.testing.assert_allclose(rows, 1.0, rtol=1e-4)  # each reader's weights sum to 1
    grad = traces(figures.grad_depth(real_runs))
    np.testing.assert_allclose(
        decode(grad[0]["y"]), gradients.gradient_profile(base).values, rtol=1e-6
    )
    (loss_b, loss_f) = traces(figures.loss(real_runs))
    np.testing.assert_allclose(decode(loss_b["x"]), np.arange(30))
    np.testing.assert_allclose(decode(loss_f["y"]), full["loss"].values, rtol=1e-6)
    for name in ("relative-update", "depth-entropy"):
        assert traces(figures.make_figure(name, real_runs)), name


MARKUP = "<b>x</b> %{y} &amp;"


@pytest.mark.parametrize("form", ["list", "mapping"])
def test_run_and_source_names_are_shown_literally(form):
    """Plotly renders a subset of HTML and %{…} templates: names from runs or callers are text."""
    full = full_run(name=MARKUP)
    full = full.assign_coords(source=[MARKUP, *map(str, full["source"].values[1:])])
    runs = [baseline_run(name=MARKUP), full] if form == "list" else {MARKUP: full}
    for name in figures.FIGURES:
        try:
            fig = figures.make_figure(name, runs)
        except AnalysisError:
            continue  # a figure these runs cannot show (pruning without results)
        text = json.dumps(json.loads(fig.to_json()))
        assert "<b>x</b>" not in text and "%{y} &amp;" not in text, name
        assert "&lt;b&gt;x&lt;/b&gt; &#37;{y} &amp;amp;" in text, name


# ----------------------------------------------------------------------------- per-layer figures


def test_layer_output_draws_seeds_as_their_mean_with_a_band_over_them():
    from synthetic_runs import block_run

    runs = {f"blk{s}": block_run(seed=s, name=f"blk{s}") for s in (0, 1)}
    runs["blk1"]["layer_output_rms"] = runs["blk1"]["layer_output_rms"] * 3.0
    band, mean = traces(figures.layer_output(runs))
    np.testing.assert_allclose(decode(mean["y"]), [2.0, 4.0, 2.0, 4.0])  # mean of ×1 and ×3
    np.testing.assert_allclose(decode(band["y"]), [3, 6, 3, 6, 2, 1, 2, 1])  # max, then min back
    assert band["fill"] == "toself" and "mean of 2 seeds" in mean["name"]
    assert mean["name"].startswith("block · 4 layers")
    each = traces(figures.layer_output(runs, seeds="each"))
    assert [t["name"].split(" (")[0] for t in each] == ["blk0", "blk1"]


def test_layer_output_and_gradient_share_axes_and_give_exponent_and_excess():
    runs = {"base": baseline_run(n_layers=4), "full": full_run()}
    out = traces(figures.layer_output(runs))
    np.testing.assert_allclose(decode(out[0]["y"]), 10 * np.arange(1, 5), rtol=1e-6)  # last step
    np.testing.assert_allclose(decode(out[1]["y"]), [0.5])  # full_run on the same axes
    assert "exponent 1.00" in out[0]["name"]
    fig = figures.layer_grad(runs)
    grad = traces(fig)
    np.testing.assert_allclose(decode(grad[0]["y"]), 1 / np.arange(1, 5), rtol=1e-6)
    assert f"early excess {1 / np.median(1 / np.arange(1, 5)):.2f}" in grad[0]["name"]
    assert fig.layout.yaxis.type == "log"
    param = traces(figures.make_figure("layer-param-grad", runs))
    np.testing.assert_allclose(decode(param[0]["y"]), [1, 1, 1, 1])
    with pytest.raises(AnalysisError, match="not a per-layer gradient"):
        figures.layer_grad(runs, variable="grad_norm")


def test_a_per_layer_figure_of_runs_that_did_not_record_it_says_so():
    old = baseline_run().drop_vars("layer_output_rms")
    with pytest.raises(AnalysisError, match="'layer_output_rms'"):
        figures.layer_output(old)


def test_mass_received_figure_plots_mass_by_source_depth_and_gradient_against_it():
    from synthetic_runs import block_run

    line, scatter = traces(figures.mass_received(block_run()))
    # sources emb (depth 0), block1 (ends after sublayer 3: depth 4), block2 (depth 8)
    np.testing.assert_allclose(decode(line["x"]), [0, 4, 8])
    np.testing.assert_allclose(decode(line["y"]), [13 / 3, 11 / 6, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(decode(scatter["y"])[1:], [4.0, 8.0])
    assert list(line["customdata"]) == ["emb", "block1", "block2"]


def test_depth_heatmap_by_kind_has_a_pre_attn_and_a_pre_mlp_panel_per_run():
    fig = figures.depth_heatmap({"f": full_run()}, layout="by-kind")
    attn, mlp = traces(fig)
    np.testing.assert_allclose(decode(attn["z"]).astype(float), FULL_WEIGHTS[:1])
    np.testing.assert_allclose(decode(mlp["z"]).astype(float), FULL_WEIGHTS[1:])
    assert list(attn["y"]) == ["L0"]
    titles = [a.text for a in fig.layout.annotations]
    assert titles[0].startswith("f · Pre-Attn") and titles[1].startswith("f · Pre-MLP")
    with pytest.raises(AnalysisError, match="layout='rows'"):
        figures.depth_heatmap(full_run(), layout="rows")


def test_measures_over_training_are_drawn_per_step_or_per_window():
    ds = baseline_run(n_layers=4)
    output, stream = traces(figures.growth_over_training(ds))
    np.testing.assert_allclose(decode(output["x"]), np.arange(10) * 10)
    np.testing.assert_allclose(decode(output["y"]), 1.0, rtol=1e-6)
    assert output["line"]["dash"] != stream["line"]["dash"]
    layer, param = traces(figures.excess_over_training(ds, window=5))
    np.testing.assert_allclose(decode(layer["x"]), [40, 90])
    np.testing.assert_allclose(decode(layer["y"]), 1 / np.median(1 / np.arange(1, 5)), rtol=1e-6)
    np.testing.assert_allclose(decode(param["y"]), 1.0)


def test_pruning_figure_draws_the_removal_asked_for():
    rows = pruning.units("full", 1, 4, "layer")
    both = pruning.merge_results(
        pruning.merge_results(None, pruning.results_dataset(rows, "layer", [2.2], 2.0, {})),
        pruning.results_dataset(rows, "layer", [2.5], 2.0, {}, "mask"),
    )
    ds = full_run().copy()
    for name, (dims, arr) in pruning.stored_arrays(both).items():
        ds[name] = (dims, arr)
    default = figures.pruning(ds)
    np.testing.assert_allclose(decode(traces(default)[0]["y"]), [0.5], rtol=1e-6)
    assert "mask removal" in default.layout.title.text
    zero = figures.pruning(ds, removal="zero")
    np.testing.assert_allclose(decode(traces(zero)[0]["y"]), [0.2], rtol=1e-5)
    assert "zero removal" in zero.layout.title.text


def test_export_offers_every_registered_figure():
    from attnres_probe.cli.cmd_export import FIGURE_NAMES

    assert FIGURE_NAMES == tuple(figures.FIGURES)
