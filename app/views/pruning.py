"""Pruning: the loss increase when each layer / sublayer / block is removed, against the cheap
proxies recorded in training, for each removal mode stored side by side; runs the measurement
when the run has none stored for the chosen granularity and removal."""

from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from attnres_probe import figures
from attnres_probe.analysis import pruning as pruning_analysis
from attnres_probe.app import ui
from attnres_probe.app.text import literal

REMOVAL_NOTES = {
    "mask": "mask: the removed unit leaves every later depth softmax, which renormalises over "
    "the sources that remain",
    "zero": "zero: the unit's update is replaced by zeros (in AttnRes the zero source stays "
    "inside every later depth softmax and takes weight, which only rescales what the next "
    "RMSNorm reads: in this project's models the same loss as mask up to the norm's eps)",
}

ui.header("Pruning")
picked = ui.selected(ui.current_rows())


def measure(path, granularity: str, removal: str) -> None:
    bar = st.progress(0.0, text="starting…")

    def progress(done: int, total: int, unit: str) -> None:
        bar.progress(done / total, text=literal(f"{done}/{total}: {unit}"))

    try:
        pruning_analysis.prune_run(
            path, granularity=granularity, progress=progress, save=True, removal=removal
        )
    except Exception as err:  # noqa: BLE001 - shown on the page; the dashboard stays up
        ui.error(err)
        return
    bar.progress(1.0, text="done")
    ui.forget_loaded()  # the results were written into the store: read it again
    st.rerun()


def _number(x: float, digits: int) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else "–"


def stored_table(ds, granularity: str) -> None:
    """One row per removal mode stored at ``granularity``: intact loss, cheapest unit and each
    proxy's Spearman ρ against the measured increase."""
    rows = []
    for removal in pruning_analysis.removals_at(ds, granularity):
        try:
            cmp = pruning_analysis.compare_with_proxies(ds, granularity, removal=removal)
        except ValueError as err:  # AnalysisError included
            ui.error(err)
            continue
        inc = cmp["prune_loss_increase"].values
        cheapest = int(inc.argmin())
        rows.append(
            {
                "removal": removal,
                "intact loss": _number(float(cmp["prune_base_loss"]), 4),
                "cheapest unit": f"{cmp['unit'].values[cheapest]} (+{inc[cheapest]:.4f})",
                "ρ 1 − cos_in_out": _number(cmp.attrs.get("spearman_block_influence", math.nan), 2),
                "ρ relative update": _number(
                    cmp.attrs.get("spearman_relative_update", math.nan), 2
                ),
            }
        )
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True, key="pruning_removals")


if picked is not None:
    row, path = picked
    choices = ["layer", "sublayer"] + (["block"] if row.residual == "block" else [])
    granularity = (
        st.segmented_control(
            "Remove one", choices, default="layer", key="granularity", bind="query-params"
        )
        or "layer"
    )
    removals = list(pruning_analysis.REMOVALS) if row.residual != "baseline" else ["zero"]
    default = pruning_analysis.default_removal(row.residual or "baseline")
    removal = (
        st.segmented_control(
            "Removal", removals, default=default, key="removal", bind="query-params"
        )
        or default
    )
    if removal not in removals:  # e.g. ?removal=mask in the URL of a baseline run
        removal = default
    st.caption(
        REMOVAL_NOTES[removal]
        + ("" if row.residual != "baseline" else " — a baseline has no depth softmax, so only zero")
    )
    ds = ui.load(path)
    st.caption(literal(ui.describe_row(row)))
    stored_table(ds, granularity)
    drawn = ui.chart(
        lambda: figures.pruning({row.name: ds}, granularity=granularity, removal=removal),
        "pruning",
    )
    if drawn is not None:
        results = pruning_analysis.compare_with_proxies(
            ds, granularity, removal=removal
        ).to_dataframe()
        ui.table_with_csv(results, "pruning", f"pruning-by-{granularity}-{removal}.csv")
        if granularity == "layer" and "prune_path_loss" in ds.data_vars:
            ui.chart(lambda: figures.prune_path({row.name: ds}), "prune_path", True)
    else:
        if ui.has_checkpoint(path):
            st.markdown(
                "Measure it now: the checkpoint is run on held-out batches with each "
                f"{granularity} removed in turn ({removal}); the result is stored in the run "
                "beside the others."
            )
            if st.button(
                f"Run pruning sensitivity by {granularity} ({removal})", key="run_pruning"
            ):
                measure(path, granularity, removal)
        else:
            st.info(
                "This run has no checkpoint (checkpoint.safetensors), so pruning cannot be "
                "measured here; runs made with `attnres-probe train` save one at the end. "
                + pruning_analysis.NO_CHECKPOINT_HINT[0].upper()
                + pruning_analysis.NO_CHECKPOINT_HINT[1:]
                + "; the results then show on this page."
            )
