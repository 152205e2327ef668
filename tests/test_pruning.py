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


# ----------------------------------------------------------------------------- a real checkpoint

FROZEN, PLANTED, DEAD = 0, 1, 2  # layer roles in the planted model


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    """A 3-layer baseline where one layer carries what was learned: layer 0 stays frozen at its
    (tiny-update) initialisation, layer 1 trains with the embedding and head, layer 2 has zero
    output projections (its updates are exactly 0). Recorded with the probe; checkpointed."""
    import torch
    from synthetic_runs import small_corpus

    from attnres_probe.checkpoint import save_checkpoint
    from attnres_probe.data import ByteCorpus
    from attnres_probe.hooks import probe
    from attnres_probe.models import ModelConfig, build_model
    from attnres_probe.train import lm_loss

    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("planted")
    corpus_path = small_corpus()
    corpus = ByteCorpus.load(corpus_path)
    cfg = ModelConfig(residual="baseline", n_layers=3, d_model=32, n_heads=2, max_seq_len=32)
    model = build_model(cfg)
    with torch.no_grad():
        model.layers[DEAD].attn.proj.weight.zero_()
        model.layers[DEAD].mlp.proj.weight.zero_()
    for frozen in (FROZEN, DEAD):
        model.layers[frozen].requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    with probe(model, run, every=5) as p:
        for _ in range(60):
            loss = lm_loss(model, corpus.batch("train", 16, 32, gen))
            loss.backward()
            p.step(loss=loss)
            opt.step()
            opt.zero_grad(set_to_none=True)
    train_config = {"data": corpus_path, "batch_size": 16, "seq_len": 32}
    save_checkpoint(run, model.state_dict(), cfg.to_dict(), {"train_config": train_config})
    return run


def test_pruning_finds_the_planted_layer_and_exactly_zero_for_a_zeroed_one(planted_run):
    calls = []
    res = pruning.prune_run(planted_run, "layer", batches=4, progress=lambda *a: calls.append(a))
    inc = dict(zip(res["unit"].values.tolist(), res["prune_loss_increase"].values, strict=True))
    assert max(inc, key=inc.get) == f"L{PLANTED}"
    assert inc[f"L{PLANTED}"] > 0.05, inc
    assert inc[f"L{DEAD}"] == 0.0
    assert calls[-1] == (4, 4, f"L{DEAD}") and len(calls) == 4
    assert res.attrs["batch_size"] == 16 and res.attrs["seq_len"] == 32


def test_pruning_results_are_stored_in_the_run_beside_other_granularities(planted_run):
    from attnres_probe.store import open_run

    layer = pruning.prune_run(planted_run, "layer", batches=2)
    sub = pruning.prune_run(planted_run, "sublayer", batches=2)
    ds = open_run(planted_run)
    stored = pruning.pruning_results(ds, None)
    assert stored.sizes["unit"] == 3 + 6
    np.testing.assert_allclose(
        pruning.pruning_results(ds, "layer")["prune_loss"].values,
        layer["prune_loss"].values,
        rtol=1e-6,
    )
    got = pruning.pruning_results(ds, "sublayer")
    assert got["prune_loss_increase"].sel(
        unit=[f"L{DEAD}.attn", f"L{DEAD}.mlp"]
    ).values.tolist() == [0.0, 0.0]
    assert float(got["prune_base_loss"]) == pytest.approx(float(sub["prune_base_loss"]))


def test_block_influence_ranks_the_planted_layers_like_the_measured_loss(planted_run):
    from attnres_probe.store import open_run

    pruning.prune_run(planted_run, "layer", batches=2)
    cmp = pruning.compare_with_proxies(open_run(planted_run), "layer")
    bi = dict(zip(cmp["unit"].values.tolist(), cmp["block_influence"].values, strict=True))
    assert bi[f"L{DEAD}"] == pytest.approx(0.0, abs=1e-5)  # stream leaves the layer unchanged
    assert bi[f"L{PLANTED}"] > bi[f"L{FROZEN}"] > bi[f"L{DEAD}"] - 1e-6
    # Removing the frozen random layer can even help a little, so the ranks need not match
    # exactly; the proxy still has to agree in sign.
    assert cmp.attrs["spearman_block_influence"] > 0


def test_prune_command_prints_the_table_and_one_line_errors(planted_run, tmp_path):
    from typer.testing import CliRunner

    from attnres_probe.cli.main import app

    runner = CliRunner()
    r = runner.invoke(app, ["prune", str(planted_run), "--batches", "2"])
    assert r.exit_code == 0, r.output
    assert f"L{PLANTED}" in r.stdout and "Spearman" in r.stdout
    r = runner.invoke(app, ["prune", str(planted_run), "--granularity", "block"])
    assert r.exit_code == 1
    assert "needs a Block AttnRes run" in r.stderr and "Traceback" not in r.output
    r = runner.invoke(app, ["prune", str(tmp_path)])
    assert r.exit_code == 1 and "checkpoint" in r.stderr and "Traceback" not in r.output
    r = runner.invoke(app, ["prune", str(planted_run), "--granularity", "head"])
    assert r.exit_code == 2


def test_pruned_run_shows_in_the_figure_and_the_summary(planted_run):
    from synthetic_runs import decode, traces

    from attnres_probe import figures
    from attnres_probe.analysis.summary import run_summary
    from attnres_probe.store import open_run

    res = pruning.prune_run(planted_run, "layer", batches=2)
    ds = open_run(planted_run)
    bars = traces(figures.pruning(ds))[0]
    np.testing.assert_allclose(decode(bars["y"]), res["prune_loss_increase"].values, rtol=1e-6)
    prunable = run_summary(ds)["most_prunable"]
    assert prunable["by"] == "held-out loss increase"
    assert f"L{PLANTED}" not in [u["unit"] for u in prunable["layers"][:2]]
    assert prunable["base_loss"] == pytest.approx(float(res["prune_base_loss"]), rel=1e-6)
