"""Pruning: the loss increase when each layer / sublayer / block is removed, against the cheap
proxies recorded in training; runs the measurement when the run has none stored."""

from __future__ import annotations

import streamlit as st

from attnres_probe import figures
from attnres_probe.analysis.pruning import compare_with_proxies
from attnres_probe.app import catalog, ui

ui.header("Pruning")
picked = ui.selected(ui.current_rows())


def measure(path, granularity: str) -> None:
    from attnres_probe.analysis.pruning import prune_run

    bar = st.progress(0.0, text="starting…")

    def progress(done: int, total: int, unit: str) -> None:
        bar.progress(done / total, text=catalog.literal(f"{done}/{total}: {unit}"))

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
    choices = ["layer", "sublayer"] + (["block"] if row.kind == "block" else [])
    granularity = (
        st.segmented_control(
            "Remove one", choices, default="layer", key="granularity", bind="query-params"
        )
        or "layer"
    )
    ds = ui.load(path)
    st.caption(catalog.literal(ui.describe_row(row)))
    drawn = ui.chart(lambda: figures.pruning({row.name: ds}, granularity=granularity), "pruning")
    if drawn is not None:
        results = compare_with_proxies(ds, granularity).to_dataframe()
        with st.expander("Numbers (table, CSV)"):
            st.dataframe(results, key="pruning_table")
            st.download_button(
                "Download CSV",
                results.to_csv().encode("utf-8"),
                file_name=f"pruning-by-{granularity}.csv",
                mime="text/csv",
                key="pruning_csv",
            )
        if granularity == "layer" and "prune_path_loss" in ds.data_vars:
            ui.chart(lambda: figures.prune_path({row.name: ds}), "prune_path", True)
    else:
        if row.has_checkpoint:
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
