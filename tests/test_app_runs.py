"""Recorded runs for the dashboard tests, written through the store's RunWriter, and the
catalog's reading of them (live, finished, interrupted, broken, refused).

``build_root`` makes a folder with every kind of run the dashboard must cope with; the app and
browser tests import it. ``trained_run`` trains a tiny Full AttnRes model once per session
(checkpoint included) for the per-token and pruning views.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from attnres_probe.models.config import ModelConfig

HTML_NAME = "<img src=x onerror=alert(1)> **b** [l](javascript:alert(1))"
HTML_ATTR = (
    "<script>alert(2)</script> _i_ :red[r] **bold** [link](javascript:alert(1)) "
    "<img src=x onerror=alert(3)>"
)
BASELINE = "exp/baseline"
FULL = "exp/full"
LIVE = "live-full"
INTERRUPTED = "interrupted"
BROKEN = "broken"
ESCAPE = "escape"
TRAINED = "trained-full"
OPENABLE = sorted([BASELINE, FULL, LIVE, INTERRUPTED, HTML_NAME])
_live_writers: list = []  # kept open (never closed) so their runs stay live


def _available(cfg: ModelConfig) -> np.ndarray:
    """[n_sublayers + 1, n_sources] True where a reader can attend over a source (full)."""
    n_sub, n_src = cfg.n_sublayers, len(cfg.source_names)
    return np.arange(n_src)[None, :] <= np.arange(n_sub + 1)[:, None]


def step_values(cfg: ModelConfig, i: int, n_steps: int, rng: np.random.Generator) -> dict:
    """Plausible values of recorded step ``i``: baseline streams grow with depth, AttnRes ones
    stay flat; depth weights are a softmax over the available sources."""
    n_sub, n_layers = cfg.n_sublayers, cfg.n_layers
    depth = np.arange(1, n_sub + 1, dtype=np.float32)
    grows = cfg.residual == "baseline"
    hidden = (np.sqrt(depth) if grows else np.ones(n_sub)) * (1 + 0.05 * rng.random(n_sub))
    values = {
        "loss": np.float32(5.5 - 3.0 * i / max(1, n_steps) + 0.05 * rng.random()),
        "hidden_rms": hidden,
        "update_rms": 0.5 + 0.1 * rng.random(n_sub),
        "grad_norm": (1.0 / depth if grows else np.ones(n_sub)) * (1 + 0.1 * rng.random(n_sub)),
        "param_grad_norm": 0.1 + rng.random(n_layers),
        "cos_in_out": 0.9 - 0.1 * rng.random(n_layers),
        "nonfinite": np.float32(0),
    }
    if cfg.residual != "baseline":
        ok = _available(cfg)
        logits = np.where(ok, rng.normal(size=ok.shape), -np.inf)
        w = np.exp(logits - logits.max(1, keepdims=True))
        w = np.where(ok, w / w.sum(1, keepdims=True), np.nan)
        entropy = -np.nansum(np.where(ok, w * np.log(np.where(ok, w, 1.0)), 0.0), axis=1)
        values |= {
            "depth_weights": w[:n_sub],
            "depth_entropy": entropy[:n_sub],
            "depth_weights_out": w[n_sub],
            "depth_entropy_out": np.float32(entropy[n_sub]),
        }
    return values


def variables_of(cfg: ModelConfig) -> dict[str, tuple[str, ...]]:
    from attnres_probe.store import SCHEMA_VARIABLES

    return {
        name: dims
        for name, dims in SCHEMA_VARIABLES.items()
        if cfg.residual != "baseline" or not name.startswith("depth_")
    }


def record(
    run_dir: Path,
    cfg: ModelConfig,
    n_steps: int,
    every: int = 1,
    status: str | None = "finished",
    run_name: str | None = None,
    flush_every: int = 64,
    seed: int = 0,
    extra_attrs: dict | None = None,
):
    """Write a run of ``n_steps`` recorded steps; ``status=None`` leaves the writer open (live).
    Returns the writer."""
    from attnres_probe.store import RunWriter, schema_coords

    rng = np.random.default_rng(seed)
    attrs = {
        "model_config": json.dumps(cfg.to_dict()),
        "residual": cfg.residual,
        "n_layers": cfg.n_layers,
    }
    if run_name is not None:
        attrs["run_name"] = run_name
    attrs |= extra_attrs or {}
    writer = RunWriter(
        run_dir,
        variables=variables_of(cfg),
        coords=schema_coords(cfg.n_layers, cfg.source_names),
        attrs=attrs,
        flush_every=flush_every,
    )
    for i in range(n_steps):
        writer.append(i * every, step_values(cfg, i, n_steps, rng))
    if status is None:
        writer.flush()
        _live_writers.append(writer)
    else:
        writer.close(status=status)
    return writer


def small(residual: str, n_layers: int = 2) -> ModelConfig:
    return ModelConfig(residual=residual, n_layers=n_layers, d_model=16, n_heads=2)


def build_root(base: Path) -> Path:
    """A ROOT holding every case: finished baseline and full runs, a live run, an interrupted
    one, a broken one, a run named with HTML/Markdown, and a symlink escaping ROOT."""
    root = base / "root"
    record(root / BASELINE, small("baseline", 3), 30, every=10)
    record(root / FULL, small("full"), 30, every=10, seed=1)
    record(root / LIVE, small("full"), 8, status=None, seed=2)
    record(root / INTERRUPTED, small("baseline"), 5, status="interrupted", seed=3)
    record(
        root / HTML_NAME,
        small("baseline"),
        6,
        run_name=HTML_NAME,
        seed=4,
        extra_attrs={"corpus": HTML_ATTR},
    )
    broken = root / BROKEN / "recording.zarr"
    broken.mkdir(parents=True)
    (broken / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gr')  # cut short
    record(base / "outside", small("baseline"), 4)
    (root / ESCAPE).symlink_to(base / "outside", target_is_directory=True)
    return root


def trained_run(base: Path) -> Path:
    """A tiny Full AttnRes model trained for a few steps, with its checkpoint; made once per
    session (the directory is reused when it is already complete)."""
    run = base / TRAINED
    if not (run / "checkpoint.safetensors").is_file():
        from attnres_probe.train import TrainConfig, train

        corpus = base / "corpus.txt"  # small: loading the default corpus costs seconds
        corpus.write_text("def main(argv):\n    return len(argv) + 1\n" * 500)
        cfg = ModelConfig(residual="full", n_layers=2, d_model=16, n_heads=2, max_seq_len=32)
        train_cfg = TrainConfig(
            steps=4, batch_size=2, seq_len=16, warmup_steps=1, data=str(corpus), eval_batches=2
        )
        train(cfg, train_cfg, run)
    return run


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_root(tmp_path_factory.mktemp("catalog"))


def test_every_run_under_root_is_listed_with_its_state(root):
    from attnres_probe.app import catalog

    rows = {name: catalog.summarize(root, name) for name in catalog.run_names(root)}
    assert sorted(rows) == sorted([*OPENABLE, BROKEN, ESCAPE])
    assert rows[BASELINE].state == "finished"
    assert (rows[BASELINE].kind, rows[BASELINE].layers, rows[BASELINE].sublayers) == (
        "baseline",
        3,
        6,
    )
    assert (rows[BASELINE].steps, rows[BASELINE].last_step) == (30, 290)
    assert rows[BASELINE].last_loss is not None and 2.0 < rows[BASELINE].last_loss < 3.0
    assert rows[LIVE].state == "live" and rows[LIVE].steps == 8
    assert rows[INTERRUPTED].state == "interrupted" and rows[INTERRUPTED].openable
    assert rows[HTML_NAME].state == "finished"


def test_a_broken_run_is_a_row_with_a_reason_and_the_escape_is_refused(root):
    from attnres_probe.app import catalog

    broken = catalog.summarize(root, BROKEN)
    assert broken.state == "broken" and "zarr.json" in broken.message
    escape = catalog.summarize(root, ESCAPE)
    assert escape.state == "refused" and "outside ROOT" in escape.message
