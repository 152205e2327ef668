"""Training: any scalar measure of the runs at every recorded step, and step × sublayer maps of
the gradient norm and the relative update."""

from __future__ import annotations

import streamlit as st

from attnres_probe import figures
from attnres_probe.app import ui
from attnres_probe.app.text import literal

MAX_RUNS = 8

ui.header("Training")
rows = [r for r in ui.current_rows() if r.readable and r.n_steps > 0]
root = ui.root()

if root.path is None:
    pass  # the header said why
elif not rows:
    st.info("No run with recorded steps under ROOT yet. Make one:")
    st.code(ui.make_run_hint(root.path), language="bash")
else:
    names = [r.name for r in rows]
    chosen = ui.compare_picker(names, names[:MAX_RUNS])
    measure = st.selectbox(
        "Measure",
        list(figures.MEASURES),
        index=list(figures.MEASURES).index("growth-exponent"),
        format_func=lambda m: figures.MEASURES[m].label,
        key="measure",
        bind="query-params",
    )
    if not chosen:
        st.info("Pick at least one run.")
    else:
        by_name = {r.name: r for r in rows}

        def body() -> None:
            runs = ui.load_many(chosen)
            if not runs:
                st.info("None of the chosen runs has recorded steps yet.")
                return
            seeds = ui.seeds_picker(runs)
            window = ui.training_window(runs) if figures.MEASURES[measure].windowed else None
            ui.chart(
                lambda: figures.over_training(runs, measure, seeds, window), "measure_chart", True
            )
            st.caption(
                literal(
                    "Below: every sublayer (rows) at every recorded step (columns); a seed "
                    "group is its runs' mean."
                )
            )
            ui.chart(lambda: figures.grad_map(runs, seeds=seeds), "grad_map")
            ui.chart(lambda: figures.update_map(runs, seeds=seeds), "update_map")

        ui.live(body, is_live=any(by_name[n].status == "live" for n in chosen))
