"""Tiny recordings in the run schema, built by hand so analyses can be checked by arithmetic."""

from __future__ import annotations

import base64
import json

import numpy as np
import xarray as xr

from attnres_probe.models.config import ModelConfig
from attnres_probe.store.schema import SCHEMA_VERSION, schema_coords


def schema_dataset(cfg: ModelConfig, steps, variables: dict, name: str = "run") -> xr.Dataset:
    """A Dataset shaped like ``open_run``'s: ``variables`` maps name -> (dims, values)."""
    coords = {"step": np.asarray(steps, dtype=np.int64)}
    coords |= schema_coords(cfg.n_layers, cfg.source_names)
    attrs = {
        "model_config": json.dumps(cfg.to_dict()),
        "residual": cfg.residual,
        "n_layers": cfg.n_layers,
        "schema_version": SCHEMA_VERSION,
        "run_name": name,
        "status": "finished",
    }
    data = {k: (dims, np.asarray(v, dtype=np.float32)) for k, (dims, v) in variables.items()}
    return xr.Dataset(data, coords=coords, attrs=attrs)


def baseline_run(n_layers: int = 2, n_steps: int = 10, name: str = "base") -> xr.Dataset:
    """hidden_rms[i, l] = (i + 1)(l + 1), update_rms = 1, grad_norm = l + 1 (times i + 1),
    cos_in_out[l] = 0.9 − 0.1 l, param_grad_norm = 1, loss = 5 − 0.1 i; per layer L:
    layer_output_rms = (i + 1)(L + 1), layer_grad_norm = 1 / (L + 1)."""
    cfg = ModelConfig(residual="baseline", n_layers=n_layers, d_model=16, n_heads=2)
    steps = np.arange(n_steps) * 10
    i = np.arange(n_steps)[:, None] + 1.0
    depth = np.arange(cfg.n_sublayers)[None, :] + 1.0
    variables = {
        "loss": (("step",), 5.0 - 0.1 * np.arange(n_steps)),
        "hidden_rms": (("step", "sublayer"), i * depth),
        "update_rms": (("step", "sublayer"), np.ones((n_steps, cfg.n_sublayers))),
        "grad_norm": (("step", "sublayer"), i * depth),
        "param_grad_norm": (("step", "layer"), np.ones((n_steps, n_layers))),
        "cos_in_out": (
            ("step", "layer"),
            np.broadcast_to(0.9 - 0.1 * np.arange(n_layers), (n_steps, n_layers)),
        ),
        "layer_output_rms": (("step", "layer"), i * (np.arange(n_layers)[None, :] + 1.0)),
        "layer_grad_norm": (
            ("step", "layer"),
            np.broadcast_to(1.0 / (np.arange(n_layers) + 1.0), (n_steps, n_layers)),
        ),
        "nonfinite": (("step",), np.zeros(n_steps)),
    }
    return schema_dataset(cfg, steps, variables, name)


# Full AttnRes with one layer: sources emb, L0.attn, L0.mlp.
FULL_WEIGHTS = np.array([[1.0, np.nan, np.nan], [0.25, 0.75, np.nan]])
FULL_WEIGHTS_OUT = np.array([0.5, 0.25, 0.25])
FULL_TOKEN_ENTROPY = np.array([0.0, 0.5])


def full_run(n_steps: int = 4, name: str = "full") -> xr.Dataset:
    """Full AttnRes, 1 layer: constant depth weights FULL_WEIGHTS, token entropies
    FULL_TOKEN_ENTROPY, flat hidden_rms = 1, grad_norm = [1, 2], layer_output_rms = 0.5,
    layer_grad_norm = 1."""
    cfg = ModelConfig(residual="full", n_layers=1, d_model=16, n_heads=2)
    steps = np.arange(n_steps)
    variables = {
        "loss": (("step",), np.linspace(5, 4, n_steps)),
        "hidden_rms": (("step", "sublayer"), np.ones((n_steps, 2))),
        "update_rms": (("step", "sublayer"), np.full((n_steps, 2), 0.5)),
        "grad_norm": (("step", "sublayer"), np.tile([1.0, 2.0], (n_steps, 1))),
        "param_grad_norm": (("step", "layer"), np.ones((n_steps, 1))),
        "cos_in_out": (("step", "layer"), np.full((n_steps, 1), 0.5)),
        "layer_output_rms": (("step", "layer"), np.full((n_steps, 1), 0.5)),
        "layer_grad_norm": (("step", "layer"), np.ones((n_steps, 1))),
        "depth_weights": (("step", "sublayer", "source"), np.tile(FULL_WEIGHTS, (n_steps, 1, 1))),
        "depth_entropy": (("step", "sublayer"), np.tile(FULL_TOKEN_ENTROPY, (n_steps, 1))),
        "depth_weights_out": (("step", "source"), np.tile(FULL_WEIGHTS_OUT, (n_steps, 1))),
        "depth_entropy_out": (("step",), np.full(n_steps, 1.0)),
        "nonfinite": (("step",), np.zeros(n_steps)),
    }
    return schema_dataset(cfg, steps, variables, name)


# Block AttnRes, 4 layers in 2 blocks of 2 layers: the output rises 1 -> 2 inside each block.
BLOCK_OUTPUT = np.array([1.0, 2.0, 1.0, 2.0])


def block_run(n_steps: int = 4, name: str = "block", seed: int | None = None) -> xr.Dataset:
    """Block AttnRes, 4 layers, 2 blocks (sources emb, block1, block2, partial): every op
    reads its available sources uniformly, grad_norm[s] = s + 1, layer_output_rms =
    BLOCK_OUTPUT, layer_grad_norm = 1, hidden_rms = 1; ``train_config`` records ``seed``."""
    cfg = ModelConfig(residual="block", n_layers=4, n_blocks=2, d_model=16, n_heads=2)
    mask = cfg.source_mask()
    uniform = np.where(mask, 1.0 / mask.sum(1, keepdims=True), np.nan)
    n_sub = cfg.n_sublayers
    variables = {
        "loss": (("step",), np.linspace(5, 4, n_steps)),
        "hidden_rms": (("step", "sublayer"), np.ones((n_steps, n_sub))),
        "update_rms": (("step", "sublayer"), np.full((n_steps, n_sub), 0.5)),
        "grad_norm": (("step", "sublayer"), np.tile(np.arange(1.0, n_sub + 1), (n_steps, 1))),
        "param_grad_norm": (("step", "layer"), np.ones((n_steps, 4))),
        "cos_in_out": (("step", "layer"), np.full((n_steps, 4), 0.5)),
        "layer_output_rms": (("step", "layer"), np.tile(BLOCK_OUTPUT, (n_steps, 1))),
        "layer_grad_norm": (("step", "layer"), np.ones((n_steps, 4))),
        "depth_weights": (
            ("step", "sublayer", "source"),
            np.tile(uniform[:n_sub], (n_steps, 1, 1)),
        ),
        "depth_weights_out": (("step", "source"), np.tile(uniform[n_sub], (n_steps, 1))),
        "nonfinite": (("step",), np.zeros(n_steps)),
    }
    ds = schema_dataset(cfg, np.arange(n_steps), variables, name)
    if seed is not None:
        ds.attrs["train_config"] = json.dumps({"steps": n_steps, "seed": seed})
    return ds


_TRAINED: dict[str, object] = {}


def small_corpus() -> str:
    """A small text file (this package's own sources) as a corpus; made once per process."""
    if "corpus" not in _TRAINED:
        import atexit
        import shutil
        import tempfile
        from pathlib import Path

        import attnres_probe

        root = Path(tempfile.mkdtemp(prefix="attnres-probe-tests-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        sources = sorted(Path(attnres_probe.__file__).parent.rglob("*.py"))
        text = b"\n".join(p.read_bytes() for p in sources)[: 400 * 1024]
        (root / "corpus.txt").write_bytes(text)
        _TRAINED["root"] = root
        _TRAINED["corpus"] = str(root / "corpus.txt")
    return _TRAINED["corpus"]


def trained_runs() -> dict[str, object]:
    """A tiny baseline and a tiny Full AttnRes run trained for 30 recorded steps with the real
    training loop (probe, store, checkpoint), made once per test process: name -> run dir."""
    if "runs" not in _TRAINED:
        from attnres_probe.models import ModelConfig
        from attnres_probe.train import TrainConfig, train

        corpus = small_corpus()
        runs = {}
        for kind in ("baseline", "full"):
            cfg = ModelConfig(residual=kind, n_layers=2, d_model=32, n_heads=2, max_seq_len=32)
            tcfg = TrainConfig(
                steps=30, batch_size=8, seq_len=32, data=corpus, record_every=1, eval_batches=2
            )
            run = _TRAINED["root"] / kind
            train(cfg, tcfg, run)
            runs[kind] = run
        _TRAINED["runs"] = runs
    return _TRAINED["runs"]


def decode(v):
    """A plotly JSON array (plain list or base64 typed array) as numpy."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return a.reshape([int(s) for s in str(v["shape"]).split(",")]) if "shape" in v else a
    return np.asarray(v, dtype=object if v and isinstance(v[0], str) else None)


def traces(fig) -> list[dict]:
    """The traces as they appear in the figure's JSON (what a browser receives)."""
    return json.loads(fig.to_json())["data"]
