"""Gradients: the gradient norm w.r.t. each sublayer's output across depth, and over training."""

from __future__ import annotations

import streamlit as st

from attnres_probe import figures
from attnres_probe.app import ui

ui.header("Gradients")
picked = ui.selected(ui.current_rows())

if picked is not None:
    row, path = picked
    st.caption(
        "A PreNorm baseline tends to have large gradients at the first sublayers and small ones "
        "deep down. The Training page maps this gradient norm at every recorded step."
    )

    def body() -> None:
        ds = ui.load(path)
        if ds.sizes.get("step", 0) == 0:
            st.info("This run has no recorded steps yet.")
            return
        step = ui.step_picker(ds["step"].values)
        runs = {row.name: ui.view(ds, step)}
        ui.chart(lambda: figures.grad_depth(runs, step=step, fraction=1.0), "grad", True)

    ui.live(body, is_live=row.state == "live", path=path, row=row)
