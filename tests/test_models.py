"""The model family: shapes, parameter budget, and the AttnRes identities the method implies."""

import pytest
import torch

from attnres_probe import ModelConfig, build_model
from attnres_probe.models import ConfigError, count_parameters


def tiny(residual: str, **kw) -> ModelConfig:
    base = dict(residual=residual, n_layers=3, d_model=24, n_heads=2, n_blocks=3, max_seq_len=32)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("residual", ["baseline", "full", "block"])
def test_model_returns_logits_of_shape_batch_time_vocab(residual):
    model = build_model(tiny(residual))
    logits = model(torch.randint(0, 256, (2, 9)))
    assert logits.shape == (2, 9, 256)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("residual", ["full", "block"])
def test_attnres_model_adds_only_pseudo_queries_and_key_norms(residual):
    cfg = tiny(residual)
    extra = count_parameters(build_model(cfg)) - count_parameters(build_model(tiny("baseline")))
    n_ops = cfg.n_sublayers + 1  # one per sublayer plus the model output
    assert extra == n_ops * 2 * cfg.d_model  # a query and a key-norm scale per op


def _sublayer_io(model):
    """Capture each sublayer's input stream (its norm's input) and its output f_l."""
    inputs, outputs, handles = {}, {}, []
    for i, (norm, sub) in enumerate(model.sublayers()):
        handles.append(
            norm.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0]))
        )
        handles.append(sub.register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, o)))
    return inputs, outputs, handles


def test_full_attnres_with_zero_queries_is_the_mean_of_its_sources():
    model = build_model(tiny("full"))
    idx = torch.randint(0, 256, (2, 7))
    inputs, outputs, _ = _sublayer_io(model)
    model(idx)
    sources = [model.embed(idx)]
    for i in range(model.cfg.n_sublayers):
        torch.testing.assert_close(inputs[i], torch.stack(sources).mean(0))
        sources.append(outputs[i])


def test_block_attnres_with_one_sublayer_per_block_equals_full_attnres():
    full = build_model(tiny("full"))
    with torch.no_grad():
        for q in full.depth_queries:
            q.query.normal_()
            q.key_scale.uniform_(0.5, 1.5)
    block = build_model(tiny("block", n_blocks=6))
    block.load_state_dict(full.state_dict())
    idx = torch.randint(0, 256, (2, 11))
    torch.testing.assert_close(block(idx), full(idx), rtol=1e-5, atol=1e-5)


def test_block_attnres_with_one_block_attends_over_embedding_and_partial_sum_only():
    model = build_model(tiny("block", n_blocks=1))
    idx = torch.randint(0, 256, (1, 5))
    inputs, outputs, _ = _sublayer_io(model)
    model(idx)
    emb = model.embed(idx)
    torch.testing.assert_close(inputs[0], emb)  # nothing but the embedding exists yet
    partial = outputs[0]
    for i in range(1, model.cfg.n_sublayers):
        torch.testing.assert_close(inputs[i], (emb + partial) / 2)  # zero queries: uniform
        partial = partial + outputs[i]
    weights = model.depth_weights(idx)  # [sites, sources(emb, block1, partial), B, T]
    assert torch.isnan(weights[:-1, 1]).all()  # the block is never complete before the output
    torch.testing.assert_close(weights[1:-1, 0], torch.full_like(weights[1:-1, 0], 0.5))


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(residual="dense"), "residual"),
        (dict(residual="block", n_layers=3, n_blocks=4), "n_blocks"),
        (dict(d_model=30, n_heads=4), "d_model"),
        (dict(n_layers=0), "n_layers"),
    ],
)
def test_bad_config_names_the_field_and_what_is_valid(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        ModelConfig(**kwargs)
