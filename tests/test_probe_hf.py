"""Hugging Face decoders (random tiny configs, nothing downloaded) are probed as they are."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from probe_checks import assert_recorded, batch, hook_count, read_run, reference_hf, train_steps

from attnres_probe.hooks import LayerDiscoveryError, ProbeWarning, probe
from attnres_probe.hooks.discovery import Sublayer, discover_layers

transformers = pytest.importorskip("transformers")

from hf_models import batch as hf_batch  # noqa: E402
from hf_models import build, reference  # noqa: E402
from hf_models import build as hf_build  # noqa: E402
from hf_models import train as hf_train  # noqa: E402


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


# ----------------------------------------------------------------------------- layouts and faults


def test_reentrant_checkpointing_records_the_gradients_of_a_plain_run(tmp_path):
    model = build("llama")
    plain = copy.deepcopy(model)
    model.activation_checkpointing_enable({"use_reentrant": True})
    model.train()
    tokens = [hf_batch(0), hf_batch(1)]
    expected = [reference(plain, "llama", tokens[0])]
    with probe(model, tmp_path / "run") as p:
        hf_train(model, p, tokens[:1])
        hf_train(plain, None, tokens[:1])  # the same update on the plain copy
        expected.append(reference(plain, "llama", tokens[1]))
        hf_train(model, p, tokens[1:])
    ds = read_run(tmp_path / "run")
    for step in (0, 1):
        for name in ("grad_norm", "layer_grad_norm", "hidden_rms", "update_rms"):
            np.testing.assert_allclose(
                ds[name].sel(step=step).values, expected[step][name], rtol=1e-4, err_msg=name
            )


def test_under_bf16_autocast_every_statistic_is_accumulated_in_float32(tmp_path):
    model = build("llama")
    tokens = hf_batch(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = reference(model, "llama", tokens)
        with probe(model, tmp_path / "run") as p:
            hf_train(model, p, [tokens])
    ds = read_run(tmp_path / "run")
    for name in ("cos_in_out", "hidden_rms", "update_rms", "grad_norm", "layer_output_rms"):
        np.testing.assert_allclose(
            ds[name].sel(step=0).values, expected[name], rtol=1e-5, err_msg=name
        )


class ScaledLayer(torch.nn.Module):
    """A pre-norm layer that adds half of each update: structure says pre-norm, values do not."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.attn_norm = torch.nn.LayerNorm(width)
        self.attn = torch.nn.Linear(width, width)
        self.mlp_norm = torch.nn.LayerNorm(width)
        self.mlp = torch.nn.Linear(width, width)

    def forward(self, x):
        x = x + 0.5 * self.attn(self.attn_norm(x))
        return x + 0.5 * self.mlp(self.mlp_norm(x))


class Stack(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([ScaledLayer(), ScaledLayer()])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def test_a_layer_that_does_not_compute_what_was_discovered_is_refused_at_the_first_step(
    tmp_path,
):
    model = Stack()
    with pytest.raises(LayerDiscoveryError) as caught:
        with probe(model, tmp_path / "run") as p:
            model(torch.randn(2, 5, 16, requires_grad=True)).sum().backward()
            p.step()
    message = str(caught.value)
    assert "layer 0 (ScaledLayer)" in message
    assert "is not wired as discovered" in message and "for mlp" in message
    assert "layers=" in message


def test_training_with_dropout_before_the_residual_add_warns_once_and_records(tmp_path):
    model = hf_build("opt")
    model.config.dropout = 0.1
    for layer in model.model.decoder.layers:
        layer.dropout = 0.1
    model.train()
    with pytest.warns(ProbeWarning, match=r"dropout \(OPTConfig.dropout=0.1\)"):
        with probe(model, tmp_path / "run") as p:
            hf_train(model, p, [hf_batch(0), hf_batch(1)])
    ds = read_run(tmp_path / "run")
    assert np.isfinite(ds["update_rms"].values).all() and ds.sizes["step"] == 2


@pytest.mark.parametrize(
    "name, layout",
    [
        ("gpt2", "pre-norm [ln_1 → attn; ln_2 → mlp]"),
        ("olmo2", "post-norm [self_attn → post_attention_layernorm; mlp → post_feedforward_"),
        ("gemma2", "sandwich [input_layernorm → self_attn → post_attention_layernorm; pre_"),
        ("phi", "parallel, one norm [input_layernorm → self_attn; input_layernorm → mlp]"),
        ("opt", "pre-norm [self_attn_layer_norm → self_attn; final_layer_norm → fc1+fc2]"),
        ("bloom", "pre-norm, residual added inside [input_layernorm → self_attention (adds the"),
        ("gpt_neox", "pre-norm [input_layernorm → attention → post_attention_dropout;"),
        ("falcon_sequential", "pre-norm [input_layernorm → self_attention; post_attention_lay"),
    ],
)
def test_discovery_names_each_layout_by_the_layers_call_order(name, layout):
    spec = discover_layers(hf_build(name))[0]
    assert spec.describe().startswith(layout), spec.describe()


def test_naming_post_norms_as_pre_norms_is_refused_and_a_sublayer_form_records_as_found(
    tmp_path,
):
    model = hf_build("olmo2")
    layers = model.model.layers
    wrong = [
        (b, [(b.post_attention_layernorm, b.self_attn), (b.post_feedforward_layernorm, b.mlp)])
        for b in layers
    ]
    with pytest.raises(LayerDiscoveryError, match=r"layer 0 \(Olmo2DecoderLayer\) is not wired"):
        with probe(model, tmp_path / "wrong", layers=wrong) as p:
            hf_train(model, p, [hf_batch(0)])
    named = [
        (b, [Sublayer("attn", b.self_attn, post_norm=b.post_attention_layernorm),
             Sublayer("mlp", b.mlp, post_norm=b.post_feedforward_layernorm)])
        for b in layers
    ]  # fmt: skip
    for name, form in (("named", named), ("found", None)):
        with probe(model, tmp_path / name, layers=form) as p:
            with torch.no_grad():
                model(hf_batch(0)[:, :-1])
            p.step()
    for variable in ("hidden_rms", "update_rms", "layer_output_rms"):
        np.testing.assert_array_equal(
            read_run(tmp_path / "named")[variable].values,
            read_run(tmp_path / "found")[variable].values,
        )


def test_a_hybrid_stack_of_two_layer_classes_is_found_and_recorded(tmp_path):
    from hf_models import tiny_config

    config = tiny_config(
        "jamba", attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
        expert_layer_offset=1, use_mamba_kernels=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with probe(model, tmp_path / "run") as p:
        hf_train(model, p, [hf_batch(0)])
    ds = read_run(tmp_path / "run")
    assert ds["kind"].values.tolist() == ["mamba", "mlp", "attn", "mlp"]
    assert np.isfinite(ds["grad_norm"].values).all()
