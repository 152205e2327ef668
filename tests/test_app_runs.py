"""Recorded runs for the dashboard tests, written through the store's RunWriter, and the
dashboard's reading of them (live, finished, interrupted, broken, refused).

``build_root`` makes a folder with every kind of run the dashboard must cope with; the app and
browser tests import it. ``trained_run`` trains a tiny Full AttnRes model once per session
(checkpoint included) for the per-token and pruning views.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from attnres_probe.models.config import ModelConfig
from attnres_probe.store.synthetic import write_run

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
    writer = write_run(
        run_dir, cfg, n_steps, every, status, run_name, extra_attrs, flush_every, seed
    )
    if status is None:
        _live_writers.append(writer)
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


def served(root: Path) -> dict:
    from attnres_probe.app import confine
    from attnres_probe.store import run_paths

    return {name: confine.served_info(root, name) for name in run_paths(root)}


def test_every_run_under_root_is_listed_with_its_state(root):
    rows = served(root)
    assert sorted(rows) == sorted([*OPENABLE, BROKEN, ESCAPE])
    assert rows[BASELINE].status == "finished"
    assert (rows[BASELINE].residual, rows[BASELINE].n_layers) == ("baseline", 3)
    assert (rows[BASELINE].n_steps, rows[BASELINE].last_step) == (30, 290)
    assert rows[BASELINE].last_loss is not None and 2.0 < rows[BASELINE].last_loss < 3.0
    assert rows[LIVE].status == "live" and rows[LIVE].n_steps == 8
    assert rows[INTERRUPTED].status == "interrupted" and rows[INTERRUPTED].readable
    assert rows[HTML_NAME].status == "finished"


def test_a_broken_run_is_a_row_with_a_reason_and_the_escape_is_refused(root):
    rows = served(root)
    assert rows[BROKEN].status == "broken" and "zarr.json" in rows[BROKEN].error
    assert rows[ESCAPE].status == "refused" and "outside ROOT" in rows[ESCAPE].error
    assert not rows[BROKEN].readable and not rows[ESCAPE].readable
