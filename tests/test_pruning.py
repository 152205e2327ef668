"""Pruning sensitivity: units, rank correlation, stored results, ablating a real checkpoint."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from synthetic_runs import baseline_run, full_run
from typer.testing import CliRunner

from attnres_probe.analysis import pruning
from attnres_probe.analysis.select import AnalysisError
from attnres_probe.analysis.summary import run_summary
from attnres_probe.cli.main import app
from attnres_probe.models import ModelConfig
from attnres_probe.store import open_run, write_static_variables
from attnres_probe.store.synthetic import write_run


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


# ----------------------------------------------------------------------------- removal modes


def _results(kind_rows, losses, removal, granularity="layer", base=2.0):
    return pruning.results_dataset(kind_rows, granularity, losses, base, {}, removal)


def test_both_removals_are_stored_side_by_side_and_each_is_replaced_alone():
    rows = pruning.units("full", 1, 4, "layer")
    mask, zero = _results(rows, [2.5], "mask"), _results(rows, [2.2], "zero")
    merged = pruning.merge_results(pruning.merge_results(None, mask), zero)
    again = pruning.merge_results(merged, _results(rows, [2.7], "mask"))
    ds = _stored(full_run(), again)
    assert pruning.removals_at(ds, "layer") == ["mask", "zero"]
    assert float(pruning.pruning_results(ds, "layer", "mask")["prune_loss"][0]) == pytest.approx(
        2.7
    )
    assert float(pruning.pruning_results(ds, "layer", "zero")["prune_loss"][0]) == pytest.approx(
        2.2
    )
    everything = pruning.pruning_results(ds, None)
    assert sorted(everything["removal"].values.tolist()) == ["mask", "zero"]


def test_without_a_removal_asked_for_the_run_kind_default_is_read():
    rows = pruning.units("full", 1, 4, "layer")
    both = pruning.merge_results(
        pruning.merge_results(None, _results(rows, [2.2], "zero")), _results(rows, [2.5], "mask")
    )
    full = _stored(full_run(), both)
    assert pruning.pruning_results(full, "layer").attrs["removal"] == "mask"
    only_zero = _stored(full_run(), _results(rows, [2.2], "zero"))
    assert pruning.pruning_results(only_zero, "layer").attrs["removal"] == "zero"
    cmp = pruning.compare_with_proxies(full, "layer", removal="zero")
    assert cmp.attrs["removal"] == "zero"
    assert float(cmp["prune_loss"][0]) == pytest.approx(2.2)
    with pytest.raises(AnalysisError, match="--removal mask"):
        pruning.pruning_results(only_zero, "layer", "mask")


def test_results_stored_before_removal_modes_existed_read_as_zero():
    ds = _stored(baseline_run(), _results(pruning.units("baseline", 2, 4, "layer"), [3, 2], "zero"))
    ds = ds.drop_vars("prune_removal")
    res = pruning.pruning_results(ds, "layer")
    assert res["removal"].values.tolist() == ["zero", "zero"]
    assert res.attrs["removal"] == "zero"


def test_mask_is_refused_for_a_baseline_and_each_kind_has_its_default():
    assert pruning.default_removal("baseline") == "zero"
    assert pruning.default_removal("full") == pruning.default_removal("block") == "mask"
    assert pruning.check_removal("block", None) == "mask"
    assert pruning.check_removal("full", "zero") == "zero"
    with pytest.raises(AnalysisError, match="removal='mask' needs an AttnRes run"):
        pruning.check_removal("baseline", "mask")
    with pytest.raises(AnalysisError, match="removal='drop'"):
        pruning.check_removal("full", "drop")


def test_prune_refuses_mask_on_a_baseline_before_any_work(planted_run):
    before = pruning.removals_at(open_run(planted_run), "sublayer")
    r = CliRunner().invoke(
        app, ["prune", str(planted_run), "--removal", "mask", "--granularity", "sublayer"]
    )
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1 and "removal='mask' needs an AttnRes run" in r.stderr
    assert "use removal 'zero'" in r.stderr and "Traceback" not in r.output
    assert pruning.removals_at(open_run(planted_run), "sublayer") == before


def test_info_shows_each_stored_removal_with_its_proxies_spearman(tmp_path):
    cfg = ModelConfig(residual="full", n_layers=4, d_model=16, n_heads=2)
    write_run(tmp_path, cfg, 5)
    rows = pruning.units("full", 4, 4, "layer")
    both = pruning.merge_results(
        pruning.merge_results(None, _results(rows, [2.1, 2.2, 2.3, 2.4], "zero")),
        _results(rows, [2.4, 2.3, 2.2, 2.1], "mask"),
    )
    write_static_variables(tmp_path, pruning.stored_arrays(both))
    summary = run_summary(open_run(tmp_path))
    assert list(summary["pruning"]) == ["mask", "zero"]
    assert summary["pruning"]["mask"]["layers"][0]["unit"] == "L3"
    assert summary["pruning"]["zero"]["layers"][0]["unit"] == "L0"
    assert summary["most_prunable"]["removal"] == "mask"
    r = CliRunner().invoke(app, ["info", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "most prunable (mask)" in r.stdout and "most prunable (zero)" in r.stdout
    assert "proxy Spearman ρ (mask)" in r.stdout and "proxy Spearman ρ (zero)" in r.stdout


# ----------------------------------------------------------------------------- mask, independently


def _attend(sources: list, query):
    """An AttnRes op written out: softmax over the sources of query · RMSNorm(source) (no
    learned scale, eps 1e-6), then the weighted sum of the sources."""
    v = torch.stack(sources)  # (N, B, T, D)
    keys = v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6)
    weights = torch.softmax(keys @ query, dim=0)  # (N, B, T)
    return (weights.unsqueeze(-1) * v).sum(0)


def _full_without(model, idx, removed: set[int]):
    """Full AttnRes with the outputs of the ``removed`` sublayers left out of every later
    softmax, from the model's own modules."""
    kept = [model.embed(idx)]
    for i, (norm, sublayer) in enumerate(model.sublayers()):
        f = sublayer(norm(_attend(kept, model.depth_queries[i]())))
        if i not in removed:
            kept.append(f)
    out = _attend(kept, model.depth_queries[-1]())
    return model.lm_head(model.final_norm(out))


def _block_without(model, idx, removed: set[int]):
    """Block AttnRes whose ``removed`` sublayers leave their block's partial sum; a block left
    with none leaves every later softmax."""
    per_block = model.cfg.sublayers_per_block
    pairs = model.sublayers()
    blocks = [model.embed(idx)]
    for n in range(model.cfg.n_blocks):
        partial = None
        for s in range(per_block):
            i = n * per_block + s
            seen = blocks + ([partial] if partial is not None else [])
            norm, sublayer = pairs[i]
            f = sublayer(norm(_attend(seen, model.depth_queries[i]())))
            if i not in removed:
                partial = f if partial is None else partial + f
        if partial is not None:
            blocks.append(partial)
    out = _attend(blocks, model.depth_queries[-1]())
    return model.lm_head(model.final_norm(out))


def _random_model(residual: str, **sizes):
    from attnres_probe.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(residual=residual, d_model=16, n_heads=2, max_seq_len=16, **sizes)
    model = build_model(cfg).eval()
    with torch.no_grad():  # trained-like depth queries: far from the uniform start
        for q in getattr(model, "depth_queries", []):
            q.query.normal_(0.0, 1.0)
            q.key_scale.uniform_(0.5, 1.5)
    return model, torch.randint(0, cfg.vocab_size, (2, 12))


REMOVED = [
    ("full", {"n_layers": 3}, {2}),  # L1.attn
    ("full", {"n_layers": 3}, {0, 1}),  # layer L0
    ("block", {"n_layers": 4, "n_blocks": 4}, {2, 3}),  # block2
    ("block", {"n_layers": 4, "n_blocks": 2}, {4}),  # a block's first sublayer
]
INDEPENDENT = {"full": _full_without, "block": _block_without}


@pytest.mark.parametrize(("residual", "sizes", "removed"), REMOVED)
def test_mask_removal_equals_a_forward_without_those_sources(residual, sizes, removed):
    model, idx = _random_model(residual, **sizes)
    independent = INDEPENDENT[residual]
    with torch.no_grad():
        np.testing.assert_allclose(model(idx), independent(model, idx, set()), atol=1e-5)
        expected = independent(model, idx, removed)
        masked = model(idx, skip=removed, removal="mask")
    np.testing.assert_allclose(masked, expected, atol=1e-5)


@pytest.mark.parametrize(("residual", "sizes", "removed"), REMOVED)
def test_zero_removal_only_rescales_what_every_reader_normalises(residual, sizes, removed):
    """A zero source stays in the later softmaxes and takes weight there, but it scales every
    other source's weight by one factor, and each reader of an AttnRes output (the sublayer's
    norm, the final norm) is an RMSNorm: "zero" is "mask" up to the norms' eps."""
    model, idx = _random_model(residual, **sizes)
    first = min(removed)
    with torch.no_grad():
        weights: list[torch.Tensor] = []
        model(idx, skip=removed, removal="zero", depth_weights_out=weights)
        if residual == "full":  # the zeroed output (source first + 1) takes weight later on
            assert max(float(w[first + 1].mean()) for w in weights[first + 1 :]) > 0.05
        # Far from the eps limit (this random model's stream is small) the two differ ...
        gap = model(idx, skip=removed, removal="zero") - model(idx, skip=removed, removal="mask")
        assert gap.abs().max() > 1e-7
        model.double()  # ... and with eps -> 0 they are one function, to float64 rounding.
        for module in model.modules():
            if hasattr(module, "eps"):
                module.eps = 1e-30
        model.cfg = dataclasses.replace(model.cfg, norm_eps=1e-30)
        zeroed = model(idx, skip=removed, removal="zero")
        masked = model(idx, skip=removed, removal="mask")
    np.testing.assert_allclose(zeroed, masked, rtol=0, atol=1e-12)


def test_a_baseline_model_has_no_mask_removal():
    model, idx = _random_model("baseline", n_layers=2)
    with pytest.raises(ValueError, match="mask"):
        model(idx, skip={0}, removal="mask")


def test_pruning_a_full_checkpoint_stores_mask_and_zero_side_by_side():
    from synthetic_runs import trained_runs

    from attnres_probe.analysis.pruning import path
    from attnres_probe.tools.prune_path import prune_path

    run = trained_runs()["full"]
    mask = pruning.prune_run(run, "layer", batches=2)  # the default for AttnRes
    zero = pruning.prune_run(run, "layer", batches=2, removal="zero")
    assert mask.attrs["removal"] == "mask" and zero.attrs["removal"] == "zero"
    ds = open_run(run)
    assert pruning.removals_at(ds, "layer") == ["mask", "zero"]
    for removal, res in (("mask", mask), ("zero", zero)):
        stored = pruning.pruning_results(ds, "layer", removal)
        np.testing.assert_allclose(stored["prune_loss"], res["prune_loss"], rtol=1e-6)
    # (The two modes' losses differ only through the norms' eps: see the test above.)
    assert float(mask["prune_base_loss"]) == pytest.approx(float(zero["prune_base_loss"]))
    greedy = prune_path(run, batches=2)
    assert greedy.attrs["removal"] == "mask"
    assert path(open_run(run)).attrs["removal"] == "mask"
