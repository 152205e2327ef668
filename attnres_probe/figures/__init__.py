"""Figures: recorded runs in, ``plotly.graph_objects.Figure`` out — one function per figure.

Every function takes ``runs``: one Dataset, a list of them (named by their ``run_name`` attr)
or a dict name -> Dataset. Line figures overlay the runs; heatmaps are small multiples. A run
keeps its colour across figures (its kind's hue, its seed's shade), and runs that differ only
in seed are drawn as mean ± one standard deviation unless ``seeds="each"``. Profiles are taken
at ``step`` (the nearest recorded one) or, by default, averaged over the last ``fraction`` of
recorded steps. ``FIGURES`` maps the CLI names to the functions; :func:`figure_table` gives the
numbers a line figure draws.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from attnres_probe.analysis.select import AnalysisError
from attnres_probe.figures.depth import (
    depth_entropy,
    depth_heatmap,
    mass_received,
    token_depth_heatmap,
)
from attnres_probe.figures.layers import (
    excess_over_training,
    growth_over_training,
    layer_grad,
    layer_output,
)
from attnres_probe.figures.profiles import dilution, grad_depth, relative_update
from attnres_probe.figures.pruning import prune_path, pruning
from attnres_probe.figures.style import (
    KIND_SHADES,
    SEED_MODES,
    Runs,
    as_runs,
    log_ticks,
    run_colours,
    run_series,
    site_labels,
)
from attnres_probe.figures.training import (
    MEASURES,
    grad_map,
    loss,
    over_training,
    training_map,
    update_map,
)

__all__ = [
    "FIGURES",
    "KIND_SHADES",
    "MEASURES",
    "SEED_MODES",
    "Runs",
    "as_runs",
    "depth_entropy",
    "depth_heatmap",
    "dilution",
    "excess_over_training",
    "figure_table",
    "grad_depth",
    "grad_map",
    "growth_over_training",
    "layer_grad",
    "layer_output",
    "log_ticks",
    "loss",
    "make_figure",
    "mass_received",
    "over_training",
    "prune_path",
    "pruning",
    "relative_update",
    "run_colours",
    "run_series",
    "site_labels",
    "token_depth_heatmap",
    "training_map",
    "update_map",
]

FIGURES: dict[str, Callable[..., go.Figure]] = {
    "dilution": dilution,
    "layer-output": layer_output,
    "growth-over-training": growth_over_training,
    "relative-update": relative_update,
    "depth-heatmap": depth_heatmap,
    "depth-heatmap-by-kind": partial(depth_heatmap, layout="by-kind"),
    "depth-entropy": depth_entropy,
    "mass-received": mass_received,
    "grad-depth": grad_depth,
    "layer-grad": layer_grad,
    "layer-param-grad": partial(layer_grad, variable="param_grad_norm"),
    "excess-over-training": excess_over_training,
    "grad-map": grad_map,
    "update-map": update_map,
    "pruning": pruning,
    "prune-path": prune_path,
    "loss": loss,
}


def make_figure(name: str, runs: Runs, step: int | None = None, seeds: str = "band") -> go.Figure:
    """The figure called ``name`` (a key of ``FIGURES``) for ``runs``."""
    if name not in FIGURES:
        raise AnalysisError(f"figure {name!r} does not exist; pick one of {', '.join(FIGURES)}")
    return FIGURES[name](runs, step=step, seeds=seeds)


def figure_table(fig: go.Figure) -> pd.DataFrame:
    """The numbers a line figure draws: one row per position (its label, e.g. 'L3.attn' or
    'step 40'), one column per legend entry, and its seeds' min and max beside a seed group."""
    columns: dict[str, pd.Series] = {}
    order: dict[str, None] = {}  # positions in the order drawn (a plain union would sort them)
    for trace in fig.data:
        meta = trace.meta if isinstance(trace.meta, dict) else {}
        if "table" not in meta:
            continue
        if trace.text is not None and not isinstance(trace.text, str):
            rows = [str(t) for t in trace.text]
        else:
            rows = [f"{meta.get('position', 'x')} {x}" for x in trace.x]
        order.update(dict.fromkeys(rows))
        columns[meta["table"]] = pd.Series(list(trace.y), index=rows, dtype=float)
        if meta.get("seeds", 1) > 1 and trace.customdata is not None:
            edges = np.asarray(trace.customdata, dtype=float)
            for i, edge in ((0, "min"), (1, "max")):
                columns[f"{meta['table']} {edge}"] = pd.Series(edges[:, i], index=rows)
    frame = pd.DataFrame(columns).reindex(list(order))
    frame.index.name = "position"
    return frame
