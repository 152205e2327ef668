"""Pruning sensitivity: units, rank correlation, stored results, ablating a real checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_runs import baseline_run

from attnres_probe.analysis import pruning
from attnres_probe.analysis.select import AnalysisError


def test_units_cover_layers_sublayers_and_blocks():
    assert pruning.units("baseline", 2, 4, "layer") == [("L0", 0, 2), ("L1", 2, 4)]
    assert [u[0] for u in pruning.units("full", 1, 4, "sublayer")] == ["L0.attn", "L0.mlp"]
    assert pruning.units("block", 4, 2, "block") == [("block1", 0, 4), ("block2", 4, 8)]
    with pytest.raises(AnalysisError, match="needs a Block AttnRes run"):
        pruning.units("full", 4, 2, "block")
    with pytest.raises(AnalysisError, match="granularity='head'"):
        pruning.units("full", 4, 2, "head")


def test_spearman_matches_hand_ranks_with_ties():
    assert pruning.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert pruning.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks a = [1, 2.5, 2.5, 4], b = [1, 2, 3, 4]: ρ = Pearson of the ranks
    expected = np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1]
    assert pruning.spearman([0, 5, 5, 9], [1, 2, 3, 4]) == pytest.approx(expected)
    assert np.isnan(pruning.spearman([1, np.nan, 3], [1, 2, 3]))  # two pairs left
    assert np.isnan(pruning.spearman([1, 1, 1], [1, 2, 3]))  # constant side


def _stored(ds, results):
    ds = ds.copy()
    for name, (dims, arr) in pruning.stored_arrays(results).items():
        ds[name] = (dims, arr)
    return ds


def test_results_of_another_granularity_are_kept_when_merging():
    layer = pruning.results_dataset(
        pruning.units("baseline", 2, 4, "layer"), "layer", [3.0, 2.5], 2.0, {}
    )
    sub = pruning.results_dataset(
        pruning.units("baseline", 2, 4, "sublayer"), "sublayer", [2.1, 2.2, 2.3, 2.4], 2.0, {}
    )
    merged = pruning.merge_results(pruning.merge_results(None, layer), sub)
    again = pruning.merge_results(merged, layer)
    ds = _stored(baseline_run(), again)
    assert pruning.pruning_results(ds, None).sizes["unit"] == 6
    got = pruning.pruning_results(ds, "sublayer")
    assert got["unit"].values.tolist() == ["L0.attn", "L0.mlp", "L1.attn", "L1.mlp"]
    np.testing.assert_allclose(got["prune_loss_increase"].values, [0.1, 0.2, 0.3, 0.4], atol=1e-6)
    with pytest.raises(AnalysisError, match="--granularity block"):
        pruning.pruning_results(ds, "block")


def test_proxies_are_one_minus_cos_per_layer_and_summed_relative_update():
    res = pruning.results_dataset(
        pruning.units("baseline", 2, 4, "sublayer"), "sublayer", [2.1, 2.2, 2.3, 2.4], 2.0, {}
    )
    prox = pruning.proxies(baseline_run(), res)
    assert np.isnan(prox["block_influence"].values).all()  # a sublayer has no in/out cosine
    np.testing.assert_allclose(
        prox["relative_update"].values, [1 / 10, 1 / 20, 1 / 30, 1 / 40], rtol=1e-6
    )
    cmp = pruning.compare_with_proxies(_stored(baseline_run(), res), "sublayer")
    assert cmp.attrs["spearman_relative_update"] == pytest.approx(-1.0)
