"""The per-token depth view: run a run's checkpoint on a typed input and show, for one token,
how much each reader (sublayer, then the model output) takes from each source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
import xarray as xr

from attnres_probe import checkpoint
from attnres_probe.app import ui
from attnres_probe.app.text import literal
from attnres_probe.figures import token_depth_heatmap
from attnres_probe.store import STORE_NAME, store_version

MAX_BYTES = 256


@st.cache_resource(max_entries=4, show_spinner="Loading checkpoint…")
def _model(path: str, version: tuple):  # version: the cache key only
    return checkpoint.load_model(path)


def load_model(run_dir: Path):
    """The run's trained model (:func:`attnres_probe.checkpoint.load_model`: run directory,
    checksum and recording checked), cached until its checkpoint, its config.json or its
    recording changes. Read-only."""
    files = (run_dir / checkpoint.CHECKPOINT_FILE, run_dir / checkpoint.CONFIG_FILE)
    stamps = tuple(f.stat().st_mtime_ns if f.is_file() else None for f in files)
    recording = store_version(run_dir) if (run_dir / STORE_NAME).exists() else None
    return _model(str(run_dir), (*stamps, recording))


def reader_labels(n_layers: int) -> list[str]:
    return [f"L{i // 2}.{'attn' if i % 2 == 0 else 'mlp'}" for i in range(2 * n_layers)] + ["out"]


def token_depth_weights(run_dir: Path, text: str) -> xr.DataArray:
    """Depth weights of every token of ``text`` (UTF-8 bytes, truncated to the model's context):
    [reader, source, token], NaN where a source does not exist for that reader."""
    import torch

    data = text.encode("utf-8")
    if not data:
        raise ValueError("the input is empty; type some text to see its tokens")
    model = load_model(run_dir)
    cfg = model.cfg
    data = data[: min(MAX_BYTES, cfg.max_seq_len)]
    idx = torch.tensor([list(data)], dtype=torch.long)
    weights = model.depth_weights(idx)[:, :, 0, :].numpy()  # [n_sublayers + 1, n_sources, T]
    return xr.DataArray(
        weights,
        dims=("reader", "source", "token"),
        coords={
            "reader": reader_labels(cfg.n_layers),
            "source": list(cfg.source_names),
            "token": np.arange(len(data)),
            "byte": ("token", [_shown(b) for b in data]),
        },
        name="depth_weights",
    )


def _shown(byte: int) -> str:
    """A byte as Python writes it: 'a', '\\n', '\\xe2'."""
    return repr(bytes([byte]))[1:]


def show(weights: xr.DataArray) -> None:
    """A token slider and, for that token, the [reader × source] weights as a heatmap with
    every row labelled, and as a table (every reader, every source) with a CSV download."""
    n = weights.sizes["token"]
    position = 0
    if n > 1:
        position = st.slider("Token position", 0, n - 1, value=n - 1, key="token")
    one = weights.isel(token=position)
    what = f"token {position}: byte {one['byte'].item()}"
    st.caption(literal(what))
    st.plotly_chart(
        token_depth_heatmap(one, what), config={"displaylogo": False}, theme=None, key="token_map"
    )
    frame = pd.DataFrame(
        one.values, index=list(one["reader"].values), columns=list(one["source"].values)
    )
    frame = frame.dropna(axis="columns", how="all")
    columns = {
        c: st.column_config.ProgressColumn(str(c), min_value=0.0, max_value=1.0, format="%.2f")
        for c in frame.columns
    }
    # Tall enough for every reader row: nothing is cut off or scrolled away.
    ui.table_with_csv(
        frame,
        "token",
        f"token-{position}-depth-weights.csv",
        column_config=columns,
        height=35 * (len(frame) + 1) + 3,
    )
