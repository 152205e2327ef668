"""Compare: two or more runs side by side on shared axes (baseline vs AttnRes)."""

from __future__ import annotations

import streamlit as st

from attnres_probe import figures
from attnres_probe.app import confine, ui
from attnres_probe.app.text import describe_error, literal

ui.header("Compare")
rows = [r for r in ui.current_rows() if r.readable]
root = ui.root()

if root.path is None:
    pass  # the header said why there is nothing to compare
elif len(rows) < 2:
    st.info(
        "Comparing needs at least two readable runs under ROOT; there "
        f"{'is' if len(rows) == 1 else 'are'} {len(rows)}. Make another one:"
    )
    st.code(ui.make_run_hint(root.path), language="bash")
else:
    names = [r.name for r in rows]
    default = names[:2]
    kinds = {r.residual for r in rows}
    if "baseline" in kinds and len(kinds) > 1:  # show the contrast the project is about
        base = next(r.name for r in rows if r.residual == "baseline")
        other = next(r.name for r in rows if r.residual != "baseline")
        default = [base, other]
    chosen = st.multiselect("Runs", names, default=default, key=ui.COMPARE_KEY, bind="query-params")
    if len(chosen) < 2:
        st.info("Pick at least two runs to compare.")
    else:
        by_name = {r.name: r for r in rows}
        st.caption(
            "Profiles are averaged over the last 10 % of each run's recorded steps; each run "
            "keeps its colour in every figure. Per-layer output and gradient magnitude (top) "
            "draw runs that differ only in seed as their mean with a band over the seeds."
        )

        def body() -> None:
            runs, tails = {}, {}
            for name in chosen:
                try:
                    ds = ui.load(confine.resolve_run(root.path, name))
                except Exception as err:  # noqa: BLE001 - one bad run must not hide the others
                    st.warning(literal(f"{name}: {describe_error(err)}"))
                    continue
                if ds.sizes.get("step", 0):
                    runs[name] = ds
                    tails[name] = ui.view(ds)
            if len(runs) < 2:
                st.info("Fewer than two of the chosen runs have recorded steps yet.")
                return
            ui.chart(lambda: figures.loss(runs), key="cmp_loss")
            left, right = st.columns(2)
            with left:
                ui.chart(lambda: figures.layer_output(tails, fraction=1.0), key="cmp_output")
            with right:
                ui.chart(lambda: figures.layer_grad(tails, fraction=1.0), key="cmp_layer_grad")
            left, right = st.columns(2)
            with left:
                ui.chart(lambda: figures.dilution(tails, fraction=1.0), key="cmp_dilution")
                ui.chart(lambda: figures.depth_heatmap(tails, fraction=1.0), key="cmp_heatmap")
            with right:
                ui.chart(lambda: figures.grad_depth(tails, fraction=1.0), key="cmp_grad")
                ui.chart(lambda: figures.depth_entropy(tails, fraction=1.0), key="cmp_entropy")

        ui.live(body, is_live=any(by_name[n].status == "live" for n in chosen))
