"""Dilution: the stream RMS entering each sublayer vs depth, each update relative to it, what each
layer hands on (output magnitude per layer), and the growth exponent over training."""

from __future__ import annotations

import numpy as np
import streamlit as st

from attnres_probe import figures
from attnres_probe.app import ui

OVERLAY_STEPS = 5

ui.header("Dilution")
picked = ui.selected(ui.current_rows())


def evenly_spaced_steps(steps: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` recorded steps spread over training, first and last included."""
    idx = np.unique(np.linspace(0, steps.size - 1, num=min(n, steps.size)).round().astype(int))
    return [int(steps[i]) for i in idx]


if picked is not None:
    row, path = picked
    st.caption(
        "PreNorm adds every update into one stream, so its RMS grows with depth and each "
        "sublayer's relative contribution shrinks; AttnRes keeps the stream a weighted average."
    )
    left, right = st.columns(2)
    over_training = left.toggle(
        f"Overlay {OVERLAY_STEPS} steps across training (early light, late dark)",
        key="over_training",
        bind="query-params",
    )
    log_y = right.toggle("Log scale", key="log_y", bind="query-params")

    def body() -> None:
        ds = ui.load(path)
        if ds.sizes.get("step", 0) == 0:
            st.info("This run has no recorded steps yet.")
            return
        if over_training:
            steps = evenly_spaced_steps(ds["step"].values, OVERLAY_STEPS)
            runs = {row.name: ui.view(ds, steps=steps)}
            ui.chart(lambda: figures.dilution(runs, steps=steps, log_y=log_y), "dilution", True)
            ui.chart(lambda: figures.relative_update(runs, steps=steps), "relative_update", True)
            return
        step = ui.step_picker(ds["step"].values)
        runs = {row.name: ui.view(ds, step)}
        ui.chart(
            lambda: figures.dilution(runs, step=step, fraction=1.0, log_y=log_y), "dilution", True
        )
        ui.chart(
            lambda: figures.relative_update(runs, step=step, fraction=1.0), "relative_update", True
        )
        ui.chart(lambda: figures.layer_output(runs, step=step, fraction=1.0), "layer_output", True)
        ui.chart(
            lambda: figures.growth_over_training({row.name: ds}, window=ui.training_window(ds)),
            "growth_over_training",
            True,
        )

    ui.live(body, is_live=row.status == "live", path=path, row=row)
