"""The per-layer statistics the paper's claims use, checked by hand arithmetic on tiny runs and
against independent computations: output growth per layer, Block AttnRes's periodic pattern,
the early-layer gradient excess, the depth-attention mass each source receives beside its
gradient, the paper's Pre-Attn / Pre-MLP layout, windows over training and seed groups."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import spearmanr
from synthetic_runs import BLOCK_OUTPUT, FULL_WEIGHTS, baseline_run, block_run, full_run

from attnres_probe.analysis import depth, dilution, gradients
from attnres_probe.analysis.seeds import run_seed, seed_groups
from attnres_probe.analysis.select import AnalysisError, first_count, windows
from attnres_probe.models import ModelConfig
from attnres_probe.store import open_run
from attnres_probe.store.synthetic import write_run


def test_output_growth_is_fitted_against_layer_depth():
    ds = baseline_run(n_layers=4)  # layer_output_rms = (i + 1)(L + 1): linear in depth
    g = dilution.growth(ds, variable="layer_output_rms")
    assert float(g["exponent"]) == pytest.approx(1.0)
    assert float(g["last_first_ratio"]) == pytest.approx(4.0)
    assert g["profile"].dims == ("layer",)
    over = dilution.growth_over_training(ds, "layer_output_rms")
    np.testing.assert_allclose(over["linear_slope"].values, np.arange(1, 11), rtol=1e-6)
    with pytest.raises(AnalysisError, match="not a magnitude profile"):
        dilution.growth(ds, variable="grad_norm")


def test_square_root_output_growth_has_exponent_one_half():
    ds = baseline_run(n_layers=6)
    ds["layer_output_rms"] = np.sqrt(ds["layer_output_rms"])
    g = dilution.growth(ds, step=0, variable="layer_output_rms")
    assert float(g["exponent"]) == pytest.approx(0.5, rel=1e-5)


def test_block_periodicity_is_the_rise_within_blocks_and_the_drop_at_boundaries():
    p = dilution.block_periodicity(block_run())  # [1, 2 | 1, 2], 2 layers per block
    assert float(p["within_block_rise"]) == pytest.approx(2.0)
    assert float(p["boundary_drop"]) == pytest.approx(0.5)
    assert float(p["across_block_exponent"]) == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(p["block_end"].values, [2.0, 2.0])
    np.testing.assert_allclose(p["profile"].values, BLOCK_OUTPUT)


def test_a_profile_that_grows_across_blocks_has_a_positive_across_block_exponent():
    ds = block_run()
    ds["layer_output_rms"] = ds["layer_output_rms"] * 0 + [1.0, 2.0, 3.0, 4.0]
    p = dilution.block_periodicity(ds)
    assert float(p["boundary_drop"]) == pytest.approx(1.5)  # 3 / 2: no restart at the boundary
    assert float(p["across_block_exponent"]) == pytest.approx(1.0)  # block ends 2 -> 4


def test_block_periodicity_over_training_follows_each_step():
    ds = block_run(n_steps=4)
    values = np.tile(BLOCK_OUTPUT, (4, 1))
    values[2] = [1.0, 3.0, 1.0, 3.0]
    ds["layer_output_rms"] = (("step", "layer"), values)
    over = dilution.periodicity_over_training(ds)
    np.testing.assert_allclose(over["within_block_rise"].values, [2, 2, 3, 2])


def test_block_periodicity_of_a_run_that_is_not_block_says_so():
    with pytest.raises(AnalysisError, match="not Block AttnRes"):
        dilution.block_periodicity(baseline_run())


def test_early_layers_are_the_first_tenth_rounded_up_and_at_least_one():
    assert [first_count(n, 0.1) for n in (1, 2, 10, 11, 16, 32)] == [1, 1, 1, 2, 2, 4]


def test_early_excess_is_the_mean_of_the_first_layers_over_the_median():
    ds = baseline_run(n_layers=12)  # layer_grad_norm = 1 / (L + 1)
    g = 1.0 / np.arange(1, 13)
    expected = g[:2].mean() / np.median(g)  # ceil(1.2) = 2 early layers
    e = gradients.gradient_excess(ds, variable="layer_grad_norm")
    assert float(e["excess"]) == pytest.approx(expected, rel=1e-6)
    assert e.attrs["early"] == 2
    flat = gradients.gradient_excess(ds, variable="param_grad_norm")  # constant 1
    assert float(flat["excess"]) == pytest.approx(1.0)


def test_early_excess_over_training_per_window_uses_the_window_mean_profile():
    ds = baseline_run(n_layers=2, n_steps=6)
    first = np.array([1.0, 1.0, 3.0, 1.0, 1.0, 5.0])  # layer 0's gradient per step
    ds["layer_grad_norm"] = (("step", "layer"), np.stack([first, np.full(6, 0.5)], axis=1))
    each = gradients.excess_over_training(ds, "layer_grad_norm")
    grads = ds["layer_grad_norm"].values
    np.testing.assert_allclose(each.values, grads[:, 0] / np.median(grads, axis=1), rtol=1e-6)
    per3 = gradients.excess_over_training(ds, "layer_grad_norm", window=3)
    assert per3["step"].values.tolist() == [20, 50]  # labelled by each window's last step
    for k, rows in enumerate((slice(0, 3), slice(3, 6))):
        mean = grads[rows].mean(axis=0)
        assert float(per3[k]) == pytest.approx(mean[0] / np.median(mean), rel=1e-6)


def test_windows_count_back_from_the_last_step():
    ds = baseline_run(n_steps=7)  # steps 0, 10, …, 60
    w = windows(ds["loss"], 3)
    assert w["step"].values.tolist() == [0, 30, 60]
    expected = [5.0, np.mean([4.9, 4.8, 4.7]), np.mean([4.6, 4.5, 4.4])]
    np.testing.assert_allclose(w.values, expected, rtol=1e-6)
    assert windows(ds["loss"], None).identical(ds["loss"])
    with pytest.raises(AnalysisError, match="window=0"):
        windows(ds["loss"], 0)


def test_mass_received_sums_each_readers_weight_including_the_output():
    # FULL_WEIGHTS rows: L0.attn reads emb 1; L0.mlp emb 0.25, L0.attn 0.75; out 0.5/0.25/0.25
    m = depth.mass_received(full_run())
    np.testing.assert_allclose(m.values, [1 + 0.25 + 0.5, 0.75 + 0.25, 0.25], rtol=1e-6)
    assert FULL_WEIGHTS.shape == (2, 3)
    over = depth.mass_received(full_run(), fraction=None)
    assert over.dims == ("step", "source")


def test_mass_received_of_a_block_run_counts_every_reader_of_each_block():
    # 2 blocks of 4 sublayers, every op uniform over what it sees: sites 0 (emb), 1-3 (emb,
    # partial), 4 (emb, block1), 5-7 (emb, block1, partial), out (emb, block1, block2).
    m = depth.mass_received(block_run())
    expected = {
        "emb": 1 + 3 / 2 + 1 / 2 + 3 / 3 + 1 / 3,
        "block1": 1 / 2 + 3 / 3 + 1 / 3,
        "block2": 1 / 3,
        "partial": 3 / 2 + 3 / 3,
    }
    got = dict(zip(m["source"].values.tolist(), m.values.tolist(), strict=True))
    assert got == pytest.approx(expected)
    assert sum(got.values()) == pytest.approx(9.0)  # 8 sublayer ops and the output


def test_each_source_is_paired_with_the_gradient_of_the_update_it_is():
    full = depth.mass_and_gradient(full_run())  # grad_norm = [1, 2]
    assert np.isnan(full["grad_norm"].values[0])  # the embedding: none recorded
    np.testing.assert_allclose(full["grad_norm"].values[1:], [1.0, 2.0])
    block = depth.mass_and_gradient(block_run())  # grad_norm[s] = s + 1
    got = dict(zip(block["source"].values.tolist(), block["grad_norm"].values, strict=True))
    assert got["block1"] == 4.0 and got["block2"] == 8.0  # each block's last sublayer (3, 7)
    assert np.isnan(got["emb"]) and np.isnan(got["partial"])


def test_mass_and_gradient_correlation_is_spearmans_rho(tmp_path):
    cfg = ModelConfig(residual="full", n_layers=6, d_model=16, n_heads=2)
    write_run(tmp_path, cfg, 5)
    ds = open_run(tmp_path)
    both = depth.mass_and_gradient(ds, step=4)
    # independently: the weights of the last step summed over readers; source j ≥ 1 is
    # sublayer j − 1's update
    weights = np.nan_to_num(ds["depth_weights"].values[-1]).sum(0)
    weights = weights + ds["depth_weights_out"].values[-1]
    grads = ds["grad_norm"].values[-1]
    np.testing.assert_allclose(both["mass_received"].values, weights, rtol=1e-5)
    assert both.attrs["spearman"] == pytest.approx(spearmanr(weights[1:], grads).statistic)
    over = depth.mass_gradient_over_training(ds)
    assert over.sizes["step"] == 5 and float(over[-1]) == pytest.approx(both.attrs["spearman"])


def test_weights_by_kind_split_pre_attn_and_pre_mlp_rows_by_consumer_layer():
    w = depth.mean_depth_weights(full_run(), include_output=True)
    panels = depth.weights_by_kind(w)
    assert panels["pre_attn"].dims == ("layer", "source")
    np.testing.assert_allclose(panels["pre_attn"].sel(layer=0).values, FULL_WEIGHTS[0])
    np.testing.assert_allclose(panels["pre_mlp"].sel(layer=0).values, FULL_WEIGHTS[1])


def test_runs_that_differ_only_in_seed_form_one_group():
    runs = {
        "b0": block_run(seed=0, name="b0"),
        "b1": block_run(seed=1, name="b1"),
        "other": block_run(seed=2, n_steps=6, name="other"),  # another recipe (steps)
        "mine": full_run(),  # no recorded recipe: a group of its own
    }
    groups = seed_groups(runs)
    assert list(groups.values()) == [["b0", "b1"], ["other"], ["mine"]]
    assert list(groups)[0] == "block · 4 layers"
    assert run_seed(runs["b1"]) == 1 and run_seed(runs["mine"]) is None
    assert json.loads(runs["b0"].attrs["train_config"])["seed"] == 0
