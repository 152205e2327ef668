"""Depth attention: which earlier sources each sublayer reads (AttnRes runs), over training and
for the tokens of a typed input when the run has a checkpoint."""

from __future__ import annotations

import streamlit as st

from attnres_probe import figures
from attnres_probe.app import tokens, ui
from attnres_probe.app.text import literal

ui.header("Depth attention")
picked = ui.selected(ui.current_rows())

if picked is not None:
    row, path = picked
    if row.residual == "baseline":
        st.info(
            literal(
                f"{row.name} is a PreNorm baseline: it has no depth attention. Pick a full or "
                "block AttnRes run in the sidebar."
            )
        )
    else:
        st.caption(
            "Each row is a reader (a sublayer, last row the model output); each column a source "
            "it can attend over. Blank cells are sources that do not exist yet at that depth."
        )
        # The labels are the URL's values too (?layout=…): Streamlit writes labels there.
        layouts = {"one row per sublayer": "interleaved", "Pre-Attn and Pre-MLP panels": "by-kind"}
        shown_as = st.segmented_control(
            "Layout",
            list(layouts),
            default="one row per sublayer",
            key="layout",
            bind="query-params",
        )
        layout = layouts.get(shown_as or "", "interleaved")

        def body() -> None:
            ds = ui.load(path)
            if ds.sizes.get("step", 0) == 0:
                st.info("This run has no recorded steps yet.")
                return
            step = ui.step_picker(ds["step"].values)
            runs = {row.name: ui.view(ds, step)}
            ui.chart(
                lambda: figures.depth_heatmap(runs, step=step, fraction=1.0, layout=layout),
                "heatmap",
            )
            ui.chart(lambda: figures.depth_entropy(runs, step=step, fraction=1.0), "entropy", True)

        ui.live(body, is_live=row.status == "live", path=path, row=row)

        st.subheader("Per token")
        if not ui.has_checkpoint(path):
            st.info(
                "This run has no checkpoint (checkpoint.safetensors), so there is no model to "
                "run on an input; runs made with `attnres-probe train` save one at the end."
            )
        else:
            text = st.text_area(
                "Input text (its UTF-8 bytes are the tokens)",
                value="def main():\n    return 0\n",
                key="token_text",
                max_chars=tokens.MAX_BYTES,
                height=100,
            )
            try:
                weights = tokens.token_depth_weights(path, text)
            except (ValueError, FileNotFoundError, KeyError, RuntimeError) as err:
                ui.error(err)
            else:
                tokens.show(weights)
