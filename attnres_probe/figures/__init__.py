"""Figures: recorded runs in, ``plotly.graph_objects.Figure`` out — one function per figure.

Every function takes ``runs``: one Dataset, a list of them (named by their ``run_name`` attr)
or a dict name -> Dataset. Line figures overlay the runs; heatmaps lay them side by side. A
run keeps its colour across figures (Okabe–Ito palette, picked from a hash of its name).
Profiles are taken at ``step`` (the nearest recorded one) or, by default, averaged over the
last ``fraction`` of recorded steps. ``FIGURES`` maps the CLI names to the functions.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import plotly.graph_objects as go

from attnres_probe.analysis.select import AnalysisError
from attnres_probe.figures.depth import depth_entropy, depth_heatmap, mass_received
from attnres_probe.figures.layers import (
    excess_over_training,
    growth_over_training,
    layer_grad,
    layer_output,
)
from attnres_probe.figures.profiles import dilution, grad_depth, loss, relative_update
from attnres_probe.figures.pruning import pruning
from attnres_probe.figures.style import OKABE_ITO, Runs, as_runs, run_colours, site_labels

__all__ = [
    "FIGURES",
    "OKABE_ITO",
    "Runs",
    "as_runs",
    "depth_entropy",
    "depth_heatmap",
    "dilution",
    "excess_over_training",
    "grad_depth",
    "growth_over_training",
    "layer_grad",
    "layer_output",
    "loss",
    "make_figure",
    "mass_received",
    "pruning",
    "relative_update",
    "run_colours",
    "site_labels",
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
    "pruning": pruning,
    "loss": loss,
}


def make_figure(name: str, runs: Runs, step: int | None = None) -> go.Figure:
    """The figure called ``name`` (a key of ``FIGURES``) for ``runs``."""
    if name not in FIGURES:
        raise AnalysisError(f"figure {name!r} does not exist; pick one of {', '.join(FIGURES)}")
    return FIGURES[name](runs, step=step)
