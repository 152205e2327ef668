"""Runs: every run under ROOT with its kind, depth, progress and state; the training loss."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from attnres_probe import figures
from attnres_probe.app import confine, ui
from attnres_probe.app.text import decoded_attrs, literal
from attnres_probe.store import RunInfo

STATE_NOTE = {
    "live": "being written",
    "interrupted": "its writer stopped before finishing",
    "finished": "complete",
    "broken": "cannot be read",
    "refused": "outside ROOT, not served",
}
MAX_LOSS_RUNS = 12

ui.header("Runs")
root = ui.root()


def note(row: RunInfo) -> str:
    """The message column: why a run cannot be read, or what is unusual about it."""
    if not row.readable:
        return " ".join(row.error.split())
    if row.status == "interrupted":
        return "the writer stopped before finishing; every committed step is shown"
    if row.n_steps == 0:
        return "no recorded steps yet"
    return ""


def table(rows: list[RunInfo]) -> None:
    frame = pd.DataFrame(
        {
            "run": [r.name for r in rows],
            "state": [r.status for r in rows],
            "kind": [r.residual or "" for r in rows],
            "layers": [r.n_layers for r in rows],
            "sublayers": [ui.sublayers(r) for r in rows],
            "recorded steps": [r.n_steps for r in rows],
            "last step": [r.last_step for r in rows],
            "last loss": [r.last_loss for r in rows],
            "checkpoint": [r.readable and ui.has_checkpoint(Path(r.path)) for r in rows],
            "message": [note(r) for r in rows],
        }
    )
    st.dataframe(frame, hide_index=True, key="runs_table")
    for row in rows:
        if not row.readable:
            st.warning(literal(f"{row.name}: {STATE_NOTE[row.status]}. {note(row)}"))


def body() -> None:
    rows = ui.rows(root.path)
    table(rows)
    shown = {r.name: r for r in rows if r.readable and r.n_steps > 0 and r.last_loss is not None}
    if not shown:
        return
    picked = dict(list(shown.items())[:MAX_LOSS_RUNS])
    if len(shown) > MAX_LOSS_RUNS:
        st.caption(f"training loss of the first {MAX_LOSS_RUNS} of {len(shown)} runs")

    runs = ui.load_many(list(picked))
    if not runs:
        return
    seeds = ui.seeds_picker(runs)
    ui.chart(lambda: figures.loss(runs, seeds=seeds), "loss")


def details(name: str) -> None:
    """The stored attributes of the run picked in the sidebar, as a JSON tree (literal text)."""
    with st.expander(literal(f"Attributes of {name}")):
        try:
            attrs = ui.load(confine.resolve_run(root.path, name)).attrs
        except Exception as err:  # noqa: BLE001 - shown, never raised
            ui.error(err)
            return
        st.json(decoded_attrs(attrs), expanded=1)


if root.path is None:
    st.markdown("Start the dashboard on a folder of runs, or make one first:")
    st.code(ui.make_run_hint("runs"), language="bash")
else:
    origin = "bundled sample runs" if root.origin == "samples" else "ROOT"
    st.caption(f"{origin}: " + literal(root.path))
    rows = ui.current_rows()
    if not rows:
        st.info("No runs under this folder yet. Make one:")
        st.code(ui.make_run_hint(root.path), language="bash")
    else:
        ui.live(body, is_live=any(r.status == "live" for r in rows))
        if st.session_state.get(ui.RUN_KEY):
            details(st.session_state[ui.RUN_KEY])
