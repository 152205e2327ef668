"""Gradients: the gradient norm across depth — per sublayer output, per layer output and per
layer's weights — the early-layer excess over training, and (AttnRes) the depth-attention mass
each source receives beside its gradient."""

from __future__ import annotations

import streamlit as st

from attnres_probe import figures
from attnres_probe.app import ui

ui.header("Gradients")
picked = ui.selected(ui.current_rows())

if picked is not None:
    row, path = picked
    st.caption(
        "The paper compares the earliest layers with the rest: the legend of the per-layer "
        "figures gives the early-layer excess (mean over the first 10 % of layers / median). "
        "The per-sublayer figure's spread (CV, max/min) is a diagnostic; in AttnRes a source's "
        "gradient follows the depth-attention mass it receives (last figure). The Training "
        "page maps the gradient norm at every recorded step."
    )

    def body() -> None:
        ds = ui.load(path)
        if ds.sizes.get("step", 0) == 0:
            st.info("This run has no recorded steps yet.")
            return
        step = ui.step_picker(ds["step"].values)
        runs = {row.name: ui.view(ds, step)}
        ui.chart(lambda: figures.layer_grad(runs, step=step, fraction=1.0), "layer_grad", True)
        ui.chart(
            lambda: figures.layer_grad(runs, step=step, fraction=1.0, variable="param_grad_norm"),
            "layer_param_grad",
            True,
        )
        ui.chart(
            lambda: figures.excess_over_training({row.name: ds}, window=ui.training_window(ds)),
            "excess",
            True,
        )
        ui.chart(lambda: figures.grad_depth(runs, step=step, fraction=1.0), "grad", True)
        if row.residual != "baseline":
            ui.chart(
                lambda: figures.mass_received(runs, step=step, fraction=1.0), "mass_received", True
            )

    ui.live(body, is_live=row.status == "live", path=path, row=row)
