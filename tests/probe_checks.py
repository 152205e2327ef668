"""Helpers for the probe tests: tiny models, a training step, and the same statistics computed
independently with plain torch (retain_grad and hooks on a second copy of the model)."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr

from attnres_probe.models import ModelConfig, build_model
from attnres_probe.store import RunStoreWarning, open_run

VALUE_NAMES = (
    "hidden_rms",
    "update_rms",
    "grad_norm",
    "param_grad_norm",
    "cos_in_out",
    "loss",
    "layer_output_rms",
    "layer_grad_norm",
)


def tiny_config(residual: str, n_layers: int = 3) -> ModelConfig:
    # 6 sublayers in 3 blocks: every block has a first sublayer and one with a partial sum.
    return ModelConfig(
        residual=residual, n_layers=n_layers, d_model=32, n_heads=2, n_blocks=3, max_seq_len=16
    )


def tiny_model(residual: str, seed: int = 0, n_layers: int = 3) -> torch.nn.Module:
    """A model whose every parameter is moved off its init (non-uniform depth weights,
    non-trivial updates), so equal values cannot come from symmetry."""
    torch.manual_seed(seed)
    model = build_model(tiny_config(residual, n_layers))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def batch(seed: int = 0, size: int = 4, length: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (size, length + 1), generator=g)


def lm_loss(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:, :-1])
    logits = getattr(logits, "logits", logits)
    return F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())


def train_steps(model, p, batches, lr: float = 0.05) -> list[float]:
    """Forward, backward, ``p.step`` (if a probe), SGD step; the loop train.py runs."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for tokens in batches:
        loss = lm_loss(model, tokens)
        loss.backward()
        if p is not None:
            p.step(loss=loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def read_run(path) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error", RunStoreWarning)
        return open_run(path).load()


def hook_count(model: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(m._backward_pre_hooks)
        for m in model.modules()
    )


def _rms(t: torch.Tensor) -> float:
    return t.detach().double().pow(2).mean().sqrt().item()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.detach().double(), b.detach().double(), dim=-1).mean().item()


def _grad_norm(params) -> float:
    return sum(p.grad.double().pow(2).sum() for p in params if p.grad is not None).sqrt().item()


def reference_native(model: torch.nn.Module, tokens: torch.Tensor) -> dict[str, np.ndarray]:
    """One training step's statistics for this project's models, from a copy of ``model``."""
    model = copy.deepcopy(model)
    cfg = model.cfg
    outputs, norm_inputs, streams, emb = {}, {}, {}, []
    handles = [model.embed.register_forward_hook(lambda m, a, o: emb.append(o))]

    def keep_output(index):
        def hook(module, args, out):
            out.retain_grad()
            outputs[index] = out

        return hook

    for index, (norm, sub) in enumerate(model.sublayers()):
        handles.append(sub.register_forward_hook(keep_output(index)))
        handles.append(
            norm.register_forward_pre_hook(lambda m, a, i=index: norm_inputs.__setitem__(i, a[0]))
        )
    for index, point in enumerate(model.hook_stream):
        handles.append(point.register_forward_hook(keep_stream(streams, index)))
    loss = lm_loss(model, tokens)
    loss.backward()
    for h in handles:
        h.remove()
    n_sub, n_layers = cfg.n_sublayers, cfg.n_layers
    if cfg.residual == "baseline":  # the stream entering sublayer l: emb + Σ_{i<l} f_i
        hidden, h = [], emb[0]
        for index in range(n_sub):
            hidden.append(h)
            h = h + outputs[index]
    else:  # AttnRes: the aggregated input each norm receives
        hidden = [norm_inputs[index] for index in range(n_sub)]
    last = [2 * layer + 1 for layer in range(n_layers)]
    if cfg.residual == "baseline":  # the stream after the layer, as the model's graph has it
        layer_out = [streams[layer + 1] for layer in range(n_layers)]
        # h = x + f: ∂L/∂h is ∂L/∂f of the layer's last sublayer (a retained gradient of h
        # itself would miss the norm's share, which the fused add + norm hands to x and f)
        layer_grad = [outputs[i].grad for i in last]
    elif cfg.residual == "full":  # the source the layer adds last
        layer_out = [outputs[i] for i in last]
        layer_grad = [outputs[i].grad for i in last]
    else:  # the block's partial sum after the layer: its updates since the block began
        per_block = cfg.sublayers_per_block
        layer_out = [
            sum(outputs[i] for i in range(i_last - i_last % per_block, i_last + 1))
            for i_last in last
        ]
        # f of the layer's last sublayer feeds nothing but that sum: the same gradient
        layer_grad = [outputs[i].grad for i in last]
    queries = getattr(model, "depth_queries", None)
    values = {
        "loss": np.array(loss.item()),
        "hidden_rms": np.array([_rms(h) for h in hidden]),
        "update_rms": np.array([_rms(outputs[i]) for i in range(n_sub)]),
        "grad_norm": np.array([outputs[i].grad.double().norm().item() for i in range(n_sub)]),
        "param_grad_norm": np.array([_grad_norm(layer.parameters()) for layer in model.layers]),
        "cos_in_out": np.array([_cos(streams[i], streams[i + 1]) for i in range(n_layers)]),
        "layer_output_rms": np.array([_rms(t) for t in layer_out]),
        "layer_grad_norm": np.array([g.double().norm().item() for g in layer_grad]),
    }
    if queries is not None:
        norms = np.array([_grad_norm(q.parameters()) for q in queries])
        values["query_grad_norm"] = norms[:-1]
        values["query_grad_norm_out"] = norms[-1]
    return values


def keep_stream(streams: dict, index: int):
    """A hook keeping the stream a hook point passes, with its gradient retained."""

    def hook(module, args, out):
        if out.requires_grad:
            out.retain_grad()
        streams[index] = out

    return hook


def reference_hf(model, layer_path: str, pair_names, tokens) -> dict[str, np.ndarray]:
    """Statistics of a Hugging Face decoder from a copy: ``layer_path`` names the layer list,
    ``pair_names`` the (norm, sublayer) attribute names inside a layer."""
    model = copy.deepcopy(model)
    layers = model.get_submodule(layer_path)
    outputs, norm_inputs, layer_io = {}, {}, {}
    handles = []

    def keep_output(index):
        def hook(module, args, out):
            out = out[0] if isinstance(out, tuple) else out
            out.retain_grad()
            outputs[index] = out

        return hook

    index = 0
    for li, layer in enumerate(layers):
        handles.append(
            layer.register_forward_pre_hook(
                lambda m, a, k, li=li: layer_io.__setitem__(
                    (li, "in"), a[0] if a else k["hidden_states"]
                ),
                with_kwargs=True,
            )
        )
        handles.append(
            layer.register_forward_hook(
                lambda m, a, o, li=li: layer_io.__setitem__(
                    (li, "out"), o[0] if isinstance(o, tuple) else o
                )
            )
        )
        for norm_name, sub_name in pair_names:
            norm, sub = getattr(layer, norm_name), getattr(layer, sub_name)
            handles.append(
                norm.register_forward_pre_hook(
                    lambda m, a, i=index: norm_inputs.__setitem__(i, a[0])
                )
            )
            handles.append(sub.register_forward_hook(keep_output(index)))
            index += 1
    loss = lm_loss(model, tokens)
    loss.backward()
    for h in handles:
        h.remove()
    n_sub = index
    return {
        "loss": np.array(loss.item()),
        "hidden_rms": np.array([_rms(norm_inputs[i]) for i in range(n_sub)]),
        "update_rms": np.array([_rms(outputs[i]) for i in range(n_sub)]),
        "grad_norm": np.array([outputs[i].grad.double().norm().item() for i in range(n_sub)]),
        "param_grad_norm": np.array([_grad_norm(layer.parameters()) for layer in layers]),
        "cos_in_out": np.array(
            [_cos(layer_io[(li, "in")], layer_io[(li, "out")]) for li in range(len(layers))]
        ),
    }


def assert_recorded(ds: xr.Dataset, step: int, expected: dict[str, np.ndarray]) -> None:
    for name, want in expected.items():
        got = ds[name].sel(step=step).values
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=name)


def committed_steps(run: Path) -> int:
    """The commit marker (``n_steps``) of a run's store; 0 while it has none."""
    try:
        attrs = json.loads((Path(run) / "recording.zarr" / "zarr.json").read_text())["attributes"]
        return int(attrs["n_steps"])
    except (OSError, ValueError, KeyError):
        return 0
