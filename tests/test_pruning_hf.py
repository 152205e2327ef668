"""Pruning sensitivity of a Hugging Face model trained in one's own loop: ``prune_model`` against
an independent removal, and its results in the run (info, export, the dashboard)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from probe_checks import read_run
from typer.testing import CliRunner

import attnres_probe
from attnres_probe.analysis.pruning import pruning_results
from attnres_probe.cli import app as cli_app
from attnres_probe.hooks import probe

pytest.importorskip("transformers")

from hf_models import batch, build, layer_list, lm_loss, train  # noqa: E402

DASHBOARD = Path(__file__).resolve().parents[1] / "app" / "dashboard.py"


def loss_without(model, tokens, module, replace) -> float:
    """The loss with ``module``'s output replaced by ``replace(args, output)`` (a plain hook,
    not the probe's discovery)."""

    def hook(m, args, output):
        out = output[0] if isinstance(output, tuple) else output
        new = replace(args, out)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return lm_loss(model, tokens)[0].item()
    finally:
        handle.remove()


@pytest.mark.parametrize("name", ["llama", "gpt2", "bloom"])
def test_removing_a_layer_equals_a_forward_that_skips_it(name):
    model = build(name).eval()
    tokens = [batch(5), batch(6)]
    got = attnres_probe.prune_model(model, tokens, granularity="layer")
    for i, layer in enumerate(layer_list(model)):
        # The layer hands on the stream it was given: none of its updates is added.
        want = np.mean([loss_without(model, t, layer, lambda a, out: a[0]) for t in tokens])
        np.testing.assert_allclose(got["prune_loss"].values[i], want, rtol=1e-6)
    base = np.mean([lm_loss(model, t)[0].item() for t in tokens])
    np.testing.assert_allclose(float(got["prune_base_loss"]), base, rtol=1e-6)
    assert got["unit"].values.tolist() == ["L0", "L1"]
    assert str(got.attrs["removal"]) == "zero"


def test_removing_a_sublayer_drops_its_update_from_the_stream():
    model = build("llama").eval()
    tokens = [batch(5)]
    got = attnres_probe.prune_model(model, tokens, granularity="sublayer")
    assert got["unit"].values.tolist() == ["L0.attn", "L0.mlp", "L1.attn", "L1.mlp"]
    for i, layer in enumerate(layer_list(model)):
        for j, sub in enumerate((layer.self_attn, layer.mlp)):
            want = loss_without(model, tokens[0], sub, lambda a, out: torch.zeros_like(out))
            np.testing.assert_allclose(got["prune_loss"].values[2 * i + j], want, rtol=1e-6)
    assert model.training is False and not any(
        m._forward_hooks for m in model.modules()
    )  # nothing left behind


def test_a_recorded_gpt2_is_pruned_into_its_run_and_shown_by_info_export_and_the_dashboard(
    tmp_path, monkeypatch
):
    model = build("gpt2")
    run = tmp_path / "runs" / "gpt2"
    with probe(model, run) as p:
        train(model, p, [batch(0), batch(1), batch(2)])
    with probe(build("gpt2"), tmp_path / "runs" / "unpruned") as p:
        train(p.model, p, [batch(0)])
    runner = CliRunner()
    before = runner.invoke(cli_app, ["prune", str(run)], prog_name="attnres-probe")
    assert before.exit_code == 1 and "prune_model(model, batches, run=RUN)" in before.output
    attnres_probe.prune_model(model, [batch(7), batch(8)], run=run)
    attnres_probe.prune_model(model, [batch(7)], granularity="sublayer", run=run)
    ds = read_run(run)
    stored = pruning_results(ds, None)
    assert sorted(set(stored["granularity"].values.tolist())) == ["layer", "sublayer"]
    info = runner.invoke(cli_app, ["info", str(run)], prog_name="attnres-probe")
    assert info.exit_code == 0 and "most prunable" in info.output, info.output
    out = tmp_path / "pruning.json"
    export = runner.invoke(
        cli_app,
        ["export", str(run), "--figure", "pruning", "--format", "json", "--out", str(out)],
        prog_name="attnres-probe",
    )
    assert export.exit_code == 0, export.output
    figure = json.loads(out.read_text())
    assert [str(u) for u in figure["data"][0]["x"]] == ["L0", "L1"]

    from streamlit.testing.v1 import AppTest

    from attnres_probe.app.confine import ROOT_ENV

    monkeypatch.setenv(ROOT_ENV, str(run.parent))
    pages = {}
    for name in ("gpt2", "unpruned"):
        at = AppTest.from_file(str(DASHBOARD), default_timeout=60)
        at.query_params["run"] = name
        at.run()
        at.switch_page("views/pruning.py").run()
        assert not at.exception, [e.message for e in at.exception]
        pages[name] = at
    (chart,) = pages["gpt2"].get("plotly_chart")
    assert [str(u) for u in json.loads(chart.proto.spec)["data"][0]["x"]] == ["L0", "L1"]
    # A run without results or checkpoint says how to measure it.
    assert not pages["unpruned"].get("plotly_chart")
    assert any("prune_model" in el.value for el in pages["unpruned"].info)


def test_a_run_of_another_model_is_refused_before_anything_is_measured(tmp_path):
    model = build("gpt2")
    with probe(model, tmp_path / "run") as p:
        train(model, p, [batch(0)])
    with pytest.raises(ValueError, match="records 2 layers and 4 sublayers but the model has"):
        attnres_probe.prune_model(build("gpt2", n_layers=3), [batch(7)], run=tmp_path / "run")
