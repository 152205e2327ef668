"""Synthetic recordings with the shapes and the look of real ones, written through RunWriter.

For exercising readers, the dashboard and benchmarks at any size without training: baseline
streams grow with depth and AttnRes ones stay flat, gradient norms fall with depth in the
baseline, depth weights are a softmax over the sources a reader can see (NaN elsewhere).
The numbers are made up; never mix such runs with real ones.
"""

from __future__ import annotations

import json
from os import PathLike
from typing import TYPE_CHECKING, Any

import numpy as np

from attnres_probe.store.schema import recorded_variables, schema_coords
from attnres_probe.store.writer import RunWriter

if TYPE_CHECKING:
    from attnres_probe.models.config import ModelConfig


def step_values(
    cfg: ModelConfig, i: int, n_steps: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Values of recorded step ``i`` of ``n_steps`` (the loss falls from 5.5 towards 2.5)."""
    n_sub, n_layers = cfg.n_sublayers, cfg.n_layers
    depth = np.arange(1, n_sub + 1, dtype=np.float32)
    grows = cfg.residual == "baseline"
    layer_depth = np.arange(1, n_layers + 1, dtype=np.float32)
    if grows:  # the stream after each layer grows; the earliest layers get the largest gradient
        layer_out = np.sqrt(layer_depth)
        layer_grad = 1.0 + 2.0 / layer_depth
    elif cfg.residual == "block":  # a block's partial sum rises within the block, then restarts
        per_block = max(1, cfg.sublayers_per_block // 2)
        layer_out = 0.6 + 0.2 * (np.arange(n_layers) % per_block)
        layer_grad = np.ones(n_layers)
    else:
        layer_out = np.full(n_layers, 0.7)
        layer_grad = np.ones(n_layers)
    values = {
        "loss": np.float32(5.5 - 3.0 * i / max(1, n_steps) + 0.05 * rng.random()),
        "hidden_rms": (np.sqrt(depth) if grows else np.ones(n_sub)) * (1 + 0.05 * rng.random()),
        "update_rms": 0.5 + 0.1 * rng.random(n_sub),
        "grad_norm": (1.0 / depth if grows else np.ones(n_sub)) * (1 + 0.1 * rng.random(n_sub)),
        "param_grad_norm": 0.1 + rng.random(n_layers),
        "cos_in_out": 0.9 - 0.1 * rng.random(n_layers),
        "layer_output_rms": layer_out * (1 + 0.05 * rng.random(n_layers)),
        "layer_grad_norm": layer_grad * (1 + 0.1 * rng.random(n_layers)),
        "nonfinite": np.float32(0),
    }
    if cfg.residual != "baseline":
        ok = cfg.source_mask()
        logits = np.where(ok, rng.normal(size=ok.shape), -np.inf)
        w = np.exp(logits - logits.max(1, keepdims=True))
        w = np.where(ok, w / w.sum(1, keepdims=True), np.nan)
        entropy = -np.nansum(np.where(ok, w * np.log(np.where(ok, w, 1.0)), 0.0), axis=1)
        values |= {
            "depth_weights": w[:n_sub],
            "depth_entropy": entropy[:n_sub],
            "depth_weights_out": w[n_sub],
            "depth_entropy_out": np.float32(entropy[n_sub]),
            "query_grad_norm": 0.01 + 0.01 * rng.random(n_sub),
            "query_grad_norm_out": np.float32(0.01 + 0.01 * rng.random()),
        }
    return values


def open_writer(
    run_dir: str | PathLike,
    cfg: ModelConfig,
    run_name: str | None = None,
    attrs: dict[str, Any] | None = None,
    flush_every: int = 64,
) -> RunWriter:
    """A RunWriter for a run of ``cfg`` with the attributes the probe writes."""
    run_attrs: dict[str, Any] = {
        "model_config": json.dumps(cfg.to_dict()),
        "residual": cfg.residual,
        "n_layers": cfg.n_layers,
    }
    if run_name is not None:
        run_attrs["run_name"] = run_name
    run_attrs |= attrs or {}
    return RunWriter(
        run_dir,
        variables=recorded_variables(cfg.residual),
        coords=schema_coords(cfg.n_layers, cfg.source_names),
        attrs=run_attrs,
        flush_every=flush_every,
    )


def write_run(
    run_dir: str | PathLike,
    cfg: ModelConfig,
    n_steps: int,
    every: int = 1,
    status: str | None = "finished",
    run_name: str | None = None,
    attrs: dict[str, Any] | None = None,
    flush_every: int = 64,
    seed: int = 0,
) -> RunWriter:
    """Record ``n_steps`` steps (training steps 0, every, 2·every, …) and close the run with
    ``status``; ``status=None`` flushes and leaves the writer open, so the run stays live (keep
    the returned writer referenced for as long as it should)."""
    rng = np.random.default_rng(seed)
    writer = open_writer(run_dir, cfg, run_name, attrs, flush_every)
    for i in range(n_steps):
        writer.append(i * every, step_values(cfg, i, n_steps, rng))
    if status is None:
        writer.flush()
    else:
        writer.close(status=status)
    return writer
