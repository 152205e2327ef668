"""Hugging Face decoders (random tiny configs, nothing downloaded) are probed as they are."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from probe_checks import assert_recorded, batch, hook_count, read_run, reference_hf, train_steps

from attnres_probe.hooks import probe

transformers = pytest.importorskip("transformers")


def gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=3, n_embd=32, n_head=2, vocab_size=256, n_positions=32,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg)


def llama() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        num_hidden_layers=3, hidden_size=32, intermediate_size=64, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=256, max_position_embeddings=32,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg)


MODELS = {
    "gpt2": (gpt2, "transformer.h", [("ln_1", "attn"), ("ln_2", "mlp")]),
    "llama": (
        llama,
        "model.layers",
        [("input_layernorm", "self_attn"), ("post_attention_layernorm", "mlp")],
    ),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_hugging_face_decoders_are_found_and_recorded_like_plain_torch(name, tmp_path):
    make, layer_path, pair_names = MODELS[name]
    model = make()
    tokens = [batch(0), batch(1)]
    expected = [reference_hf(model, layer_path, pair_names, tokens[0])]
    with probe(model, tmp_path / "run") as p:
        train_steps(model, p, tokens[:1])
        expected.append(reference_hf(model, layer_path, pair_names, tokens[1]))
        train_steps(model, p, tokens[1:])
    assert hook_count(model) == 0
    ds = read_run(tmp_path / "run")
    for step in (0, 1):
        assert_recorded(ds, step, expected[step])
    assert ds.sizes["sublayer"] == 6 and ds.sizes["layer"] == 3
    assert ds["kind"].values.tolist() == ["attn", "mlp"] * 3
    assert "depth_weights" not in ds
    assert ds.attrs["residual"] == "baseline"
    assert ds.attrs["model_class"].endswith(type(model).__name__)
    assert json.loads(ds.attrs["model_config"])["vocab_size"] == 256
    assert "transformers" in json.loads(ds.attrs["versions"])


def test_layers_can_be_named_by_path_by_modules_or_by_pairs(tmp_path):
    model = gpt2()
    blocks = model.transformer.h
    forms = {
        "path": "transformer.h",
        "modules": list(blocks),
        "pairs": [(b, [(b.ln_1, b.attn), (b.ln_2, b.mlp)]) for b in blocks],
        "attention only": [(b, [(b.ln_1, b.attn)]) for b in blocks],
    }
    runs = {}
    for form, layers in forms.items():
        with probe(model, tmp_path / form, layers=layers) as p:
            with torch.no_grad():
                model(batch(0)[:, :-1])
            p.step()
        runs[form] = read_run(tmp_path / form)
    auto = runs["path"]["hidden_rms"].values
    np.testing.assert_array_equal(runs["modules"]["hidden_rms"].values, auto)
    np.testing.assert_array_equal(runs["pairs"]["hidden_rms"].values, auto)
    np.testing.assert_array_equal(runs["attention only"]["hidden_rms"].values, auto[:, ::2])
    assert runs["attention only"]["kind"].values.tolist() == ["attn"] * 3


def test_module_hooks_stay_while_attached_and_unrecorded_steps_add_nothing(tmp_path):
    model = gpt2()
    with probe(model, tmp_path / "run", every=2) as p:
        hooks = hook_count(model)
        assert hooks > 2  # norms, sublayers and layers: registered once, so compile sees them
        train_steps(model, p, [batch(0)])  # recorded
        train_steps(model, p, [batch(1)])  # unrecorded: the hooks return at once
        assert hook_count(model) == hooks
        assert not p.rec.sums.any() and not p.rec.counts.any()
    assert hook_count(model) == 0
    assert read_run(tmp_path / "run")["step"].values.tolist() == [0]
