"""Compare: two or more runs side by side on shared axes (baseline vs AttnRes)."""

from __future__ import annotations

import numpy as np
import streamlit as st

from attnres_probe import figures
from attnres_probe.app import ui

ui.header("Compare")
rows = [r for r in ui.current_rows() if r.readable]
root = ui.root()


def no_legend(fig):
    """The figure without its legend: the page's first figure names the runs for all."""
    return fig.update_layout(showlegend=False)


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
    chosen = ui.compare_picker(names, default)
    if len(chosen) < 2:
        st.info("Pick at least two runs to compare.")
    else:
        by_name = {r.name: r for r in rows}
        st.caption(
            "Each run keeps its colour on every page: its kind's hue, its seed's shade; runs "
            "that differ only in seed are their mean with a band over the seeds. The legend of "
            "the first figure names them for every figure on the page."
        )

        def body() -> None:
            runs = ui.load_many(chosen)
            if len(runs) < 2:
                st.info("Fewer than two of the chosen runs have recorded steps yet.")
                return
            seeds = ui.seeds_picker(runs)
            steps = np.unique(np.concatenate([ds["step"].values for ds in runs.values()]))
            step = ui.step_picker(steps)
            shown = {n: ui.view(ds, step) for n, ds in runs.items()}
            kw = {"step": step, "fraction": 1.0, "seeds": seeds}
            ui.chart(lambda: figures.loss(runs, seeds=seeds), "cmp_loss")
            left, right = st.columns(2)
            with left:
                # These two keep their legends: they give each line's growth exponent and
                # early-layer excess.
                ui.chart(lambda: figures.layer_output(shown, **kw), "cmp_output", True)
            with right:
                ui.chart(lambda: figures.layer_grad(shown, **kw), "cmp_layer_grad", True)
            left, right = st.columns(2)
            with left:
                ui.chart(lambda: no_legend(figures.dilution(shown, **kw)), "cmp_dilution", True)
                ui.chart(lambda: no_legend(figures.relative_update(shown, **kw)), "cmp_rel", True)
            with right:
                ui.chart(lambda: no_legend(figures.grad_depth(shown, **kw)), "cmp_grad", True)
                ui.chart(lambda: no_legend(figures.depth_entropy(shown, **kw)), "cmp_entropy", True)
            ui.chart(lambda: figures.depth_heatmap(shown, **kw), "cmp_heatmap")

        ui.live(body, is_live=any(by_name[n].status == "live" for n in chosen))
