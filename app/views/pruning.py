"""Pruning: the loss increase when each layer / sublayer / block is removed, against the cheap
proxies recorded in training; runs the measurement when the run has none stored."""

from __future__ import annotations

import streamlit as st

from attnres_probe import figures
from attnres_probe.analysis.pruning import prune_run
from attnres_probe.app import ui
from attnres_probe.app.text import literal

ui.header("Pruning")
picked = ui.selected(ui.current_rows())


def measure(path, granularity: str) -> None:
    bar = st.progress(0.0, text="starting…")

    def progress(done: int, total: int, unit: str) -> None:
        bar.progress(done / total, text=literal(f"{done}/{total}: {unit}"))

    try:
        prune_run(path, granularity=granularity, progress=progress, save=True)
    except Exception as err:  # noqa: BLE001 - shown on the page; the dashboard stays up
        ui.error(err)
        return
    bar.progress(1.0, text="done")
    ui.forget_loaded()  # the results were written into the store: read it again
    st.rerun()


if picked is not None:
    row, path = picked
    choices = ["layer", "sublayer"] + (["block"] if row.residual == "block" else [])
    granularity = (
        st.segmented_control(
            "Remove one", choices, default="layer", key="granularity", bind="query-params"
        )
        or "layer"
    )
    ds = ui.load(path)
    drawn = ui.chart(
        lambda: figures.pruning({row.name: ds}, granularity=granularity), key="pruning"
    )
    if not drawn:
        if ui.has_checkpoint(path):
            st.markdown(
                "Measure it now: the checkpoint is run on held-out batches with each "
                f"{granularity} zero-ablated in turn; the result is stored in the run."
            )
            if st.button(f"Run pruning sensitivity by {granularity}", key="run_pruning"):
                measure(path, granularity)
        else:
            st.info(
                "This run has no checkpoint (checkpoint.safetensors), so pruning cannot be "
                "measured; runs made with `attnres-probe train` save one at the end."
            )
