"""Over training: the loss, any scalar measure of a run per recorded step, and step × sublayer
maps of the gradient norm and the relative update.

:data:`MEASURES` names every scalar measure a run has per step; each is computed by the
analysis functions (nothing is recomputed here). Seed groups are drawn as mean ± one standard
deviation over the steps their runs share.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from attnres_probe.analysis import depth as depth_analysis
from attnres_probe.analysis import dilution as dilution_analysis
from attnres_probe.analysis import gradients as gradient_analysis
from attnres_probe.analysis.select import AnalysisError, require
from attnres_probe.figures.depth import heatmap_panels
from attnres_probe.figures.profiles import add_series_line
from attnres_probe.figures.style import (
    DASHES,
    Runs,
    Series,
    as_runs,
    colourbar_ticks,
    finish,
    run_series,
    site_labels,
)


@dataclass(frozen=True)
class Measure:
    """A scalar per recorded step: its label, unit, whether a log axis suits it, and how to
    get it from a run, ``of(ds, window)`` -> [step] (``window``: the statistic of the mean
    profile of each window of that many recorded steps; None: every step)."""

    label: str
    unit: str
    of: Callable[[xr.Dataset, int | None], xr.DataArray]
    log: bool = False
    windowed: bool = False  # whether ``window`` is supported


def _loss(ds: xr.Dataset, window: int | None = None) -> xr.DataArray:
    require(ds, "loss")
    return ds["loss"]


def _mean_over_depth(da: xr.DataArray) -> xr.DataArray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return da.mean("sublayer", skipna=True)


def _growth(variable: str) -> Callable[[xr.Dataset, int | None], xr.DataArray]:
    return lambda ds, window: dilution_analysis.growth_over_training(ds, variable, window)[
        "exponent"
    ]


def _excess(variable: str) -> Callable[[xr.Dataset, int | None], xr.DataArray]:
    return lambda ds, window: gradient_analysis.excess_over_training(ds, variable, window)


MEASURES: dict[str, Measure] = {
    "loss": Measure("training loss", "nats/byte", _loss),
    "growth-exponent": Measure(
        "stream RMS growth exponent with depth",
        "slope of log RMS vs log depth",
        _growth("hidden_rms"),
        windowed=True,
    ),
    "layer-growth-exponent": Measure(
        "layer output growth exponent with depth",
        "slope of log RMS vs log layer",
        _growth("layer_output_rms"),
        windowed=True,
    ),
    "early-excess": Measure(
        "early-layer gradient excess (layer outputs)",
        "first 10 % of layers / median",
        _excess("layer_grad_norm"),
        windowed=True,
    ),
    "param-early-excess": Measure(
        "early-layer gradient excess (layer weights)",
        "first 10 % of layers / median",
        _excess("param_grad_norm"),
        windowed=True,
    ),
    "last-first": Measure(
        "stream RMS last / first sublayer",
        "ratio",
        lambda ds, w: dilution_analysis.growth_over_training(ds, "hidden_rms", w)[
            "last_first_ratio"
        ],
        log=True,
        windowed=True,
    ),
    "relative-update": Measure(
        "mean relative update over sublayers",
        "update RMS / stream RMS",
        lambda ds, w: _mean_over_depth(dilution_analysis.relative_update(ds)),
        log=True,
    ),
    "grad-cv": Measure(
        "gradient spread across sublayers (CV)",
        "std / mean",
        lambda ds, w: gradient_analysis.gradient_spread(ds)["cv"],
    ),
    "grad-max-min": Measure(
        "gradient spread across sublayers (max/min)",
        "ratio",
        lambda ds, w: gradient_analysis.gradient_spread(ds)["max_over_min"],
        log=True,
    ),
    "param-grad-cv": Measure(
        "parameter-gradient spread across layers (CV)",
        "std / mean",
        lambda ds, w: gradient_analysis.gradient_spread(ds, "param_grad_norm")["cv"],
    ),
    "depth-entropy": Measure(
        "depth-attention entropy, mean over sublayers",
        "entropy / log(available sources)",
        lambda ds, w: _mean_over_depth(depth_analysis.depth_entropy(ds)["normalised_entropy"]),
    ),
}


def _shared_steps(series: Series, of: Callable[[xr.Dataset], xr.DataArray]) -> dict:
    """Each member's measure on the steps every member recorded."""
    values = {lab: of(ds) for lab, ds in series.members.items()}
    common = None
    for da in values.values():
        steps = set(da["step"].values.tolist())
        common = steps if common is None else common & steps
    keep = sorted(common or ())
    return {lab: da.sel(step=keep) for lab, da in values.items()}


def over_training(
    runs: Runs,
    measure: str | Sequence[str] = "growth-exponent",
    seeds: str = "band",
    window: int | None = None,
) -> go.Figure:
    """``measure`` (a key of :data:`MEASURES`, or several: one dash each) at every recorded
    step, or of each ``window`` of recorded steps, one line per run or seed group (mean with
    the band of its seeds, over the steps they share). Runs without it are named and left out."""
    names = [measure] if isinstance(measure, str) else list(measure)
    for name in names:
        if name not in MEASURES:
            raise AnalysisError(
                f"measure {name!r} does not exist; pick one of {', '.join(MEASURES)}"
            )
        if window is not None and not MEASURES[name].windowed:
            raise AnalysisError(f"measure {name!r} has no windows; draw it without window=")
    fig = go.Figure()
    skipped: dict[str, None] = {}
    for s in run_series(runs, seeds):
        for j, name in enumerate(names):
            m = MEASURES[name]
            try:
                values = _shared_steps(s, lambda ds, m=m: m.of(ds, window))
            except AnalysisError:
                skipped[s.label] = None
                continue
            first = next(iter(values.values()))
            if first.sizes["step"] == 0:
                skipped[s.label] = None
                continue
            steps = first["step"].values
            shown = s.label if len(names) == 1 else f"{s.label} · {m.label}"
            add_series_line(
                fig,
                s,
                values,
                steps,
                None,  # named "step N" from x: a long run sends no label per point
                m.label,
                m.unit,
                name=shown,
                dash=DASHES[j % len(DASHES)] if len(names) > 1 else None,
            )
    if not fig.data:
        labels = ", ".join(MEASURES[n].label for n in names)
        raise AnalysisError(f"none of {', '.join(as_runs(runs))} has {labels}")
    for trace in fig.data:
        trace.mode = "lines"
    steps = np.concatenate([np.asarray(t.x) for t in fig.data])
    note = f"steps {int(steps.min())}–{int(steps.max())}, " + (
        f"windows of {window} recorded steps" if window else "every recorded one"
    )
    if skipped:
        note += f" · no value: {', '.join(skipped)}"
    m = MEASURES[names[0]]
    title = m.label if len(names) == 1 else " and ".join(MEASURES[n].label for n in names)
    title = f"{title[0].upper()}{title[1:]} over training<br><sup>{note}</sup>"
    return finish(fig, title, "optimiser step", m.unit, m.log)


def loss(runs: Runs, step: int | None = None, seeds: str = "band") -> go.Figure:
    """Training loss of each recorded step, one line per run or seed group. ``step`` is unused."""
    fig = over_training(runs, "loss", seeds)
    fig.update_layout(title_text="Training loss")
    fig.update_yaxes(title_text="cross-entropy (nats/byte)")
    return fig


MAP_VARIABLES = {  # name -> (title, colour-bar title, values [step, sublayer])
    "grad_norm": (
        "gradient norm ‖∂loss/∂sublayer output‖₂",
        "‖∂loss/∂output‖₂",
        gradient_analysis.gradient_norms,
    ),
    "relative_update": (
        "relative update: update RMS / stream RMS",
        "update/stream",
        dilution_analysis.relative_update,
    ),
}


MAX_COLUMNS = 400  # steps drawn per map: a long run is thinned to evenly spaced recorded steps


def _thinned(values: dict[str, xr.DataArray], most: int) -> dict[str, xr.DataArray]:
    n = next(iter(values.values())).sizes["step"]
    if n <= most:
        return values
    keep = np.unique(np.linspace(0, n - 1, most).round().astype(int))
    return {lab: da.isel(step=keep) for lab, da in values.items()}


def training_map(
    runs: Runs, variable: str = "grad_norm", seeds: str = "band", max_columns: int = MAX_COLUMNS
) -> go.Figure:
    """``variable`` [step × sublayer] as a heatmap per run or seed group (mean over seeds), on
    one log colour scale so panels compare; every sublayer row labelled. A run with more than
    ``max_columns`` recorded steps is drawn at that many evenly spaced ones."""
    if variable not in MAP_VARIABLES:
        raise AnalysisError(
            f"variable {variable!r} has no map; pick one of {', '.join(MAP_VARIABLES)}"
        )
    label, short, of = MAP_VARIABLES[variable]
    panels = []
    thinned = False
    for s in run_series(runs, seeds):
        values = _shared_steps(s, of)
        if next(iter(values.values())).sizes["step"] > max_columns:
            values, thinned = _thinned(values, max_columns), True
        stacked = xr.concat(list(values.values()), dim="run", join="override")
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = stacked.mean("run", skipna=True)
            logged = np.log10(mean.where(mean > 0)).transpose("sublayer", "step")
        title = s.label if not s.is_group else f"{s.label}: mean"
        panels.append((title, logged.assign_coords(sublayer=site_labels(logged))))
    finite = np.concatenate([p.values[np.isfinite(p.values)] for _, p in panels])
    if finite.size == 0:
        raise AnalysisError(f"no finite {label} to draw")
    lo, hi = np.percentile(finite, [1, 99])
    ticks = colourbar_ticks(np.array([lo, hi]))
    fig = heatmap_panels(
        panels,
        "optimiser step",
        "sublayer",
        {
            "colorscale": "Cividis",
            "cmin": float(lo),
            "cmax": float(hi) if hi > lo else float(lo) + 1e-9,
            "colorbar": {"title": {"text": short}, "thickness": 14, "len": 0.6, **ticks},
        },
        "%{y} at step %{x}<br>log10 value %{z:.3f}",
    )
    for trace in fig.data:
        trace.customdata = np.power(10.0, np.asarray(trace.z, dtype=float))
        trace.hovertemplate = trace.hovertemplate.replace(
            "log10 value %{z:.3f}", "value %{customdata:.4g}"
        )
        trace.xgap = trace.ygap = 0
    title = f"{label[0].upper()}{label[1:]} over training and depth"
    note = "colour: log scale, clipped to the 1st–99th percentile of all panels"
    if thinned:
        note += f"; long runs at {max_columns} evenly spaced recorded steps"
    return finish(fig, f"{title}<br><sup>{note}</sup>", legend=False, height=fig.layout.height)


def grad_map(runs: Runs, step: int | None = None, seeds: str = "band") -> go.Figure:
    """Gradient norm per sublayer at every recorded step. ``step`` is unused."""
    return training_map(runs, "grad_norm", seeds)


def update_map(runs: Runs, step: int | None = None, seeds: str = "band") -> go.Figure:
    """Relative update per sublayer at every recorded step. ``step`` is unused."""
    return training_map(runs, "relative_update", seeds)
