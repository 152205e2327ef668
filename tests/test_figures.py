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


def seeded(ds, seed, name, steps=10):
    """``ds`` as a run trained with ``seed`` (same recipe otherwise), named ``name``."""
    ds = ds.copy()
    ds.attrs = {**ds.attrs, "run_name": name}
    ds.attrs["train_config"] = json.dumps({"steps": steps, "seed": seed, "lr": 0.003})
    return ds


def scaled(ds, factor, name, seed):
    """A seed of ``ds`` whose recorded profiles are ``factor`` times the original's."""
    out = seeded(ds, seed, name)
    for var in ("hidden_rms", "grad_norm", "update_rms"):
        out[var] = ds[var] * factor
    return out


def lines(fig) -> list[dict]:
    """The traces that draw a legend entry's values (band edges left out)."""
    return [t for t in traces(fig) if (t.get("meta") or {}).get("table") or t["type"] != "scatter"]


def test_every_registered_figure_builds_and_round_trips_through_json():
    runs = {"base": with_pruning(baseline_run(), [0.5, 0.1]), "full": full_run()}
    for name in figures.FIGURES:
        if name == "prune-path":
            continue  # needs a stored greedy path: below
        fig = figures.make_figure(name, runs)
        assert fig.data, name
        assert fig.layout.title.text, name
        assert go.Figure(json.loads(fig.to_json())).to_dict()["data"], name


def test_dilution_draws_the_tail_mean_stream_rms_of_each_run():
    fig = figures.dilution([baseline_run(), full_run()], fraction=0.2)
    data = lines(fig)
    assert [d["name"] for d in data] == ["base", "full"]
    np.testing.assert_allclose(decode(data[0]["y"]), 9.5 * np.arange(1, 5), rtol=1e-6)
    np.testing.assert_allclose(decode(data[0]["x"]), [0, 1, 2, 3])
    assert "mean of steps 80–90 (2 recorded)" in fig.layout.title.text
    assert fig.layout.yaxis.title.text == "stream RMS entering the sublayer"
    assert list(fig.layout.xaxis.ticktext)[:2] == ["L0.attn", "L0.mlp"]


def test_a_step_that_was_not_recorded_says_which_step_is_shown():
    fig = figures.grad_depth(baseline_run(), step=7)  # steps are 0, 10, 20, …
    assert "step 10 (step 7 was not recorded; the nearest recorded one)" in fig.layout.title.text
    np.testing.assert_allclose(decode(lines(fig)[0]["y"]), 2 * np.arange(1, 5))


def test_overlaid_steps_are_coloured_along_training_in_a_sequential_scale():
    from plotly.colors import sample_colorscale

    data = lines(figures.dilution(baseline_run(), steps=[0, 40, 90]))
    assert len(data) == 3
    np.testing.assert_allclose(decode(data[0]["y"]), [1, 2, 3, 4])
    np.testing.assert_allclose(decode(data[2]["y"]), [10, 20, 30, 40])
    colours = [d["line"]["color"] for d in data]
    assert colours == sample_colorscale("Viridis_r", np.linspace(0.15, 1.0, 3))
    assert [d["name"] for d in data] == ["step 0", "step 40", "step 90"]


def test_runs_that_differ_only_in_seed_are_drawn_as_mean_and_band_or_each_on_request():
    seeds = [scaled(baseline_run(), f, f"base-s{k}", k) for k, f in enumerate((1.0, 2.0, 4.0))]
    other = seeded(full_run(), 0, "full-s0")
    fig = figures.grad_depth([*seeds, other], step=90)
    mean, full = lines(fig)
    assert mean["name"] == "baseline · 2 layers (3 seeds)" and full["name"] == "full-s0"
    profile = 10 * np.arange(1, 5)[None, :] * np.array([1.0, 2.0, 4.0])[:, None]
    np.testing.assert_allclose(decode(mean["y"]), profile.mean(0), rtol=1e-6)
    lo, hi = decode(mean["customdata"]).astype(float).T
    np.testing.assert_allclose(lo, profile.min(0), rtol=1e-6)
    np.testing.assert_allclose(hi, profile.max(0), rtol=1e-6)
    upper, lower = [t for t in traces(fig) if t.get("hoverinfo") == "skip"]
    np.testing.assert_allclose(decode(upper["y"]), profile.max(0), rtol=1e-6)
    np.testing.assert_allclose(decode(lower["y"]), profile.min(0), rtol=1e-6)
    assert lower["fill"] == "tonexty"
    table = figures.figure_table(fig)
    group = "baseline · 2 layers (3 seeds)"
    assert list(table.columns) == [group, f"{group} min", f"{group} max", "full-s0"]
    assert list(table.index) == ["L0.attn", "L0.mlp", "L1.attn", "L1.mlp"]
    each = lines(figures.grad_depth([*seeds, other], step=90, seeds="each"))
    assert [t["name"] for t in each] == ["base-s0", "base-s1", "base-s2", "full-s0"]
    with pytest.raises(AnalysisError, match="seeds='mean' is not one of band, each"):
        figures.grad_depth(seeds, seeds="mean")


def test_a_run_keeps_its_colour_everywhere_by_kind_and_seed():
    base = [seeded(baseline_run(), k, f"base-s{k}") for k in range(3)]
    full = seeded(with_pruning(full_run(), [0.2]), 0, "full-s0")
    alone = figures.run_colours([base[1]])["base-s1"]
    together = figures.run_colours([*base, full])
    assert together["base-s1"] == alone  # the same colour whoever else is shown
    assert set(together.values()) == {*figures.KIND_SHADES["baseline"][:3], together["full-s0"]}
    assert together["full-s0"] in figures.KIND_SHADES["full"]
    runs = [*base, full]
    by_figure = [
        {t["name"]: t["line"]["color"] for t in lines(figures.make_figure(n, runs, seeds="each"))}
        for n in ("dilution", "grad-depth", "loss")
    ]
    assert all(colours == by_figure[0] for colours in by_figure)
    assert by_figure[0] == together
    (bar,) = [t for t in traces(figures.pruning(runs, seeds="each")) if t["type"] == "bar"]
    assert bar["marker"]["color"] == together["full-s0"]


def test_log_axes_name_every_tick_with_its_full_value():
    vals, text = figures.log_ticks(np.array([0.0038, 0.0135]))  # the top of a decade named too
    assert text[-3:] == ["0.009", "0.01", "0.012"] and vals[-1] == 0.012
    vals, text = figures.log_ticks(np.array([0.0021, 0.03]))
    assert text == ["0.002", "0.003", "0.005", "0.007", "0.01", "0.02", "0.03"]
    assert np.allclose(vals, [0.002, 0.003, 0.005, 0.007, 0.01, 0.02, 0.03])
    assert figures.log_ticks(np.array([1e-4, 10]))[1] == [
        "0.0001",
        "0.001",
        "0.01",
        "0.1",
        "1",
        "10",
    ]
    fig = figures.relative_update(baseline_run(), step=0)  # ratios 1 … 1/4
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.tickmode == "array"
    assert list(fig.layout.yaxis.ticktext) == [
        "0.25",
        "0.3",
        "0.4",
        "0.5",
        "0.6",
        "0.7",
        "0.8",
        "0.9",
        "1",
    ]


def test_relative_update_uses_a_log_axis_and_the_ratio():
    fig = figures.relative_update(baseline_run(), step=0)
    np.testing.assert_allclose(decode(lines(fig)[0]["y"]), [1, 1 / 2, 1 / 3, 1 / 4], rtol=1e-6)
    assert fig.layout.yaxis.type == "log"


def test_legends_sit_below_the_plot_and_never_take_its_width():
    fig = figures.dilution([baseline_run(), full_run()])
    legend = fig.layout.legend
    assert legend.orientation == "h" and legend.yref == "container" and legend.y == 0


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


def test_heatmaps_are_small_multiples_with_every_row_labelled_and_room_for_each():
    from attnres_probe.figures.style import ROW_PX

    runs = {f"r{i}": full_run(name=f"r{i}") for i in range(5)}
    fig = figures.depth_heatmap(runs)
    data = traces(fig)
    assert [d["xaxis"] for d in data] == ["x", "x2", "x3", "x4", "x5"]  # 3 per row, then 2
    assert all(d["coloraxis"] == "coloraxis" for d in data)
    layout = fig.layout
    assert list(layout.yaxis.tickvals) == ["L0.attn", "L0.mlp", "out"]  # every row named
    assert layout.yaxis2.showticklabels is False  # same rows: named once per panel row
    assert layout.height >= 2 * 3 * ROW_PX
    titles = [a.text for a in layout.annotations]
    assert titles == list(runs)
    top, bottom = layout.yaxis.domain, layout.yaxis4.domain
    assert bottom[1] < top[0]  # the second row of panels sits below the first, no overlap


def test_seed_groups_share_one_heatmap_of_their_mean_weights():
    a, b = seeded(full_run(), 0, "f-s0"), seeded(full_run(), 1, "f-s1")
    b["depth_weights"] = b["depth_weights"] * 0 + np.where(np.isnan(FULL_WEIGHTS), np.nan, 0.5)
    (heat,) = traces(figures.depth_heatmap([a, b], include_output=False))
    expected = (FULL_WEIGHTS + np.where(np.isnan(FULL_WEIGHTS), np.nan, 0.5)) / 2
    np.testing.assert_allclose(decode(heat["z"]).astype(float), expected)
    assert heat["name"] == "full · 1 layers (2 seeds): mean"


def test_depth_entropy_plots_normalised_entropy_with_effective_sources_on_hover():
    (line,) = lines(figures.depth_entropy(full_run()))
    y = decode(line["y"]).astype(float)
    assert np.isnan(y[0])
    assert y[1] == pytest.approx(0.5 / np.log(2), rel=1e-6)
    assert y[2] == pytest.approx(1.0 / np.log(3), rel=1e-6)
    assert "%{hovertext}" in line["hovertemplate"]
    assert line["hovertext"][1] == f"effective sources {np.exp(0.5):.2f} of 2"


def test_grad_depth_draws_the_gradient_profile_on_a_log_axis():
    fig = figures.grad_depth(full_run())
    (line,) = lines(fig)
    np.testing.assert_allclose(decode(line["y"]), [1, 2])
    assert fig.layout.yaxis.type == "log"


def test_pruning_figure_plots_measured_increase_against_each_proxy():
    ds = with_pruning(baseline_run(), [0.5, 0.1])
    data = traces(figures.pruning(ds))
    bars, bi, rel = data
    assert bars["type"] == "bar"
    np.testing.assert_allclose(decode(bars["y"]), [0.5, 0.1], rtol=1e-6)
    np.testing.assert_allclose(decode(bi["x"]), [0.1, 0.2], rtol=1e-6)  # 1 − cos
    np.testing.assert_allclose(decode(rel["x"]), [1.5 / 10, 0.35 / 6], rtol=1e-5)
    assert list(bi["customdata"]) == ["L0", "L1"]
    with pytest.raises(AnalysisError, match="no pruning results"):
        figures.pruning(baseline_run())


def test_pruning_scatter_names_only_the_costliest_units():
    ds = with_pruning(baseline_run(n_layers=6), [0.5, 0.01, 0.9, 0.02, 0.3, 0.0])
    _, scatter, _ = traces(figures.pruning(ds))
    assert list(scatter["text"]) == ["L0", "", "L2", "", "L4", ""]  # the 3 costliest
    assert list(scatter["customdata"]) == [f"L{i}" for i in range(6)]  # hover names all
    assert "%{customdata}" in scatter["hovertemplate"]


def test_prune_path_draws_the_relative_loss_increase_of_removing_layers_together():
    ds = with_pruning(baseline_run(), [0.5, 0.1], base=2.0)
    ds["prune_path_unit"] = ("n_removed", np.array(["L1", "L0"], dtype=object))
    ds["prune_path_loss"] = ("n_removed", np.array([2.1, 3.0]))
    fig = figures.prune_path({"base": ds, "no path": full_run()})
    (line,) = lines(fig)
    np.testing.assert_allclose(decode(line["x"]), [1, 2])
    np.testing.assert_allclose(decode(line["y"]), [5.0, 50.0])  # % over the intact 2.0
    assert line["text"][1] == "2 removed (last: L0)"
    assert "no path: no path" in fig.layout.title.text
    assert fig.layout.shapes[0].y0 == 1.0  # the 1 % bound
    with pytest.raises(AnalysisError, match="none of full has a greedy pruning path"):
        figures.prune_path(full_run())


def test_loss_figure_draws_every_recorded_step():
    (line,) = lines(figures.loss(baseline_run()))
    np.testing.assert_allclose(decode(line["x"]), np.arange(10) * 10)
    np.testing.assert_allclose(decode(line["y"]), 5 - 0.1 * np.arange(10), rtol=1e-6)


def test_any_scalar_measure_is_drawn_over_training():
    from attnres_probe.analysis import dilution, gradients

    runs = [baseline_run(), full_run()]
    for measure, expected in (
        ("growth-exponent", lambda ds: dilution.growth_over_training(ds)["exponent"]),
        ("grad-cv", lambda ds: gradients.gradient_spread(ds)["cv"]),
    ):
        fig = figures.over_training(runs, measure)
        for line, ds in zip(lines(fig), runs, strict=True):
            np.testing.assert_allclose(decode(line["x"]), ds["step"].values)
            np.testing.assert_allclose(decode(line["y"]), expected(ds).values, rtol=1e-6)
    fig = figures.over_training(runs, "depth-entropy")  # AttnRes only: the baseline is named
    assert [t["name"] for t in lines(fig)] == ["full"] and "no value: base" in fig.layout.title.text
    with pytest.raises(AnalysisError, match="pick one of loss, growth-exponent"):
        figures.over_training(runs, "nope")


def test_step_by_sublayer_maps_hold_the_recorded_values_on_a_log_colour_scale():
    fig = figures.grad_map({"base": baseline_run(), "full": full_run()})
    base, full = traces(fig)
    assert list(base["y"]) == ["L0.attn", "L0.mlp", "L1.attn", "L1.mlp"]
    np.testing.assert_allclose(decode(base["x"]), np.arange(10) * 10)
    grad = baseline_run()["grad_norm"].values.T  # [sublayer, step]
    np.testing.assert_allclose(decode(base["z"]), np.log10(grad), rtol=1e-6)
    np.testing.assert_allclose(decode(base["customdata"]), grad, rtol=1e-5)
    assert "value %{customdata:.4g}" in base["hovertemplate"]
    ticks = fig.layout.coloraxis.colorbar
    assert list(ticks.ticktext)[0] in ("1", "2") and ticks.tickmode == "array"
    update = traces(figures.update_map(baseline_run()))[0]
    np.testing.assert_allclose(decode(update["z"])[:, 0], np.log10(1 / np.arange(1, 5)), rtol=1e-5)


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
    dil = lines(figures.dilution(real_runs))
    for trace, ds in zip(dil, (base, full), strict=True):
        expected = dilution.growth(ds)["profile"].values
        np.testing.assert_allclose(decode(trace["y"]), expected, rtol=1e-6)
    (heat,) = traces(figures.depth_heatmap(real_runs, step=29))
    w = depth.mean_depth_weights(full, step=29, include_output=True).values
    np.testing.assert_allclose(decode(heat["z"]).astype(float), w, rtol=1e-6)
    rows = np.nansum(decode(heat["z"]).astype(float), axis=1)
    np.testing.assert_allclose(rows, 1.0, rtol=1e-4)  # each reader's weights sum to 1
    grad = lines(figures.grad_depth(real_runs))
    np.testing.assert_allclose(
        decode(grad[0]["y"]), gradients.gradient_profile(base).values, rtol=1e-6
    )
    (loss_b, loss_f) = lines(figures.loss(real_runs))
    np.testing.assert_allclose(decode(loss_b["x"]), np.arange(30))
    np.testing.assert_allclose(decode(loss_f["y"]), full["loss"].values, rtol=1e-6)
    for name in ("relative-update", "depth-entropy", "grad-map", "update-map"):
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
    upper, lower, mean = traces(figures.layer_output(runs))
    np.testing.assert_allclose(decode(mean["y"]), [2.0, 4.0, 2.0, 4.0])  # mean of ×1 and ×3
    np.testing.assert_allclose(decode(upper["y"]), [3, 6, 3, 6])  # the seeds' max …
    np.testing.assert_allclose(decode(lower["y"]), [1, 2, 1, 2])  # … and min
    assert lower["fill"] == "tonexty" and "(2 seeds)" in mean["name"]
    assert mean["name"].startswith("block · 4 layers")
    each = traces(figures.layer_output(runs, seeds="each"))
    assert [t["name"].split(" · ")[0] for t in each] == ["blk0", "blk1"]


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
    assert list(line["text"]) == [
        "emb (depth 0)",
        "block1 (depth 4)",
        "block2 (depth 8)",
    ]


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


def test_log_x_axes_are_labelled_with_full_values_too():
    from synthetic_runs import block_run

    fig = figures.mass_received(block_run())
    assert fig.layout.xaxis2.type == "log" and fig.layout.xaxis2.tickmode == "array"
    # masses 1/3 … 13/3: every label a whole value, none a bare mantissa of a minor tick
    assert list(fig.layout.xaxis2.ticktext) == ["0.5", "0.7", "1", "2", "3"]
    np.testing.assert_allclose(fig.layout.xaxis2.tickvals, [0.5, 0.7, 1, 2, 3])


def test_a_long_run_over_training_sends_no_label_per_point():
    fig = figures.loss(baseline_run(n_steps=5000))
    (line,) = lines(fig)
    assert line.get("text") is None and line.get("customdata") is None  # "step %{x}" on hover
    assert figures.figure_table(fig).index[-1] == "step 49990"
