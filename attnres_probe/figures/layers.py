"""Per-layer profiles as the paper draws them (its Fig. 5b/c), and their measures over training.

``layer_output``: what each transformer layer hands on (``layer_output_rms``); ``layer_grad``:
the gradient it receives (``layer_grad_norm``, or ``param_grad_norm`` for the layer's own
weights). Runs that differ only in their seed are drawn as one line — the mean over seeds —
with a band spanning the seeds (min to max); ``seeds="each"`` draws every run. The legend
gives each line's growth exponent or early-layer excess. ``growth_over_training`` and
``excess_over_training`` follow those measures step by step (or per window of steps).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from attnres_probe.analysis import dilution as dilution_analysis
from attnres_probe.analysis import gradients as gradient_analysis
from attnres_probe.analysis.seeds import seed_groups
from attnres_probe.analysis.select import DEFAULT_FRACTION, AnalysisError, snapshot
from attnres_probe.figures.style import (
    DASHES,
    Runs,
    apply_style,
    as_runs,
    integer_ticks,
    plot_text,
    run_colours,
)

SEED_MODES = ("band", "each")
OUTPUT_MEANING = (
    "baseline: the stream after the layer · Block AttnRes: the block's partial sum after it · "
    "Full AttnRes: the layer's last update"
)


def _with(runs: dict[str, xr.Dataset], variable: str, what: str) -> dict[str, xr.Dataset]:
    """The runs that recorded ``variable`` (an AnalysisError naming it when none did)."""
    kept = {n: ds for n, ds in runs.items() if variable in ds.data_vars and ds.sizes["step"]}
    if not kept:
        raise AnalysisError(
            f"{what} needs {variable!r}; {', '.join(runs)} did not record it (record the runs "
            "with this version's probe)"
        )
    return kept


def _lines(runs: dict[str, xr.Dataset], seeds: str) -> list[tuple[str, list[str]]]:
    """(label, member runs) per line: seed groups (``band``) or one per run (``each``)."""
    if seeds not in SEED_MODES:
        raise AnalysisError(f"seeds={seeds!r} is not one of {', '.join(SEED_MODES)}")
    if seeds == "each":
        return [(name, [name]) for name in runs]
    # A lone run keeps its (already plot-safe) name; a group's label is made from attrs.
    return [
        (label if len(names) == 1 else plot_text(label), names)
        for label, names in seed_groups(runs).items()
    ]


def _band_traces(
    fig: go.Figure,
    label: str,
    colour: str,
    x: np.ndarray,
    stack: np.ndarray,
    describe: str,
    y_label: str,
    hover_x: str,
    steps: str,
    dash: str = "solid",
) -> None:
    """A mean line over the rows of ``stack`` [members, x], with a min–max band when there
    are several members."""
    with np.errstate(all="ignore"):
        mean = np.nanmean(stack, axis=0)
    n = stack.shape[0]
    name = f"{label} ({describe})" if describe else label
    if n > 1:
        lo, hi = np.nanmin(stack, axis=0), np.nanmax(stack, axis=0)
        fig.add_trace(
            go.Scatter(
                x=np.concatenate([x, x[::-1]]),
                y=np.concatenate([hi, lo[::-1]]),
                fill="toself",
                fillcolor=colour,
                opacity=0.18,
                line={"width": 0},
                hoverinfo="skip",
                showlegend=False,
                legendgroup=label,
                name=f"{label} band",
            )
        )
        name += f" · mean of {n} seeds, band min–max"
    fig.add_trace(
        go.Scatter(
            x=x,
            y=mean,
            mode="lines+markers",
            name=name,
            legendgroup=label,
            line={"color": colour, "dash": dash},
            hovertemplate=f"<b>{label}</b><br>{hover_x} %{{x}}<br>{y_label}: %{{y:.4g}}"
            f"<br>{steps}<extra></extra>",
        )
    )


def _layer_profile_figure(
    runs: Runs,
    variable: str,
    what: str,
    describe: Callable[[xr.DataArray], str],
    y_label: str,
    step: int | None,
    fraction: float,
    seeds: str,
) -> go.Figure:
    runs = _with(as_runs(runs), variable, what)
    lines = _lines(runs, seeds)
    colours = run_colours([label for label, _ in lines])
    fig = go.Figure()
    integer_ticks(fig, max(ds.sizes["layer"] for ds in runs.values()))
    for label, members in lines:
        profiles = [snapshot(runs[m][variable], step, fraction) for m in members]
        stack = np.stack([np.asarray(p.values, dtype=float) for p in profiles])
        mean = profiles[0].copy(data=np.nanmean(stack, axis=0))
        _band_traces(
            fig,
            label,
            colours[label],
            np.asarray(profiles[0]["layer"].values),
            stack,
            describe(mean),
            y_label,
            "layer",
            profiles[0].attrs.get("steps", ""),
        )
    return fig


def layer_output(
    runs: Runs,
    step: int | None = None,
    fraction: float = DEFAULT_FRACTION,
    seeds: str = "band",
) -> go.Figure:
    """Each transformer layer's output magnitude (``layer_output_rms``) vs layer, runs on
    shared axes (the paper's Fig. 5b); the legend gives the growth exponent with depth."""

    def describe(profile: xr.DataArray) -> str:
        fit = dilution_analysis.fit_growth(profile, "layer")
        return f"exponent {float(fit['exponent']):.2f}"

    fig = _layer_profile_figure(
        runs,
        "layer_output_rms",
        "the output-magnitude figure",
        describe,
        "output RMS",
        step,
        fraction,
        seeds,
    )
    return apply_style(
        fig,
        f"Output magnitude per layer<br><sup>{OUTPUT_MEANING}</sup>",
        "transformer layer",
        "RMS of what the layer hands on (activation units)",
    )


def layer_grad(
    runs: Runs,
    step: int | None = None,
    fraction: float = DEFAULT_FRACTION,
    seeds: str = "band",
    variable: str = "layer_grad_norm",
) -> go.Figure:
    """Each transformer layer's gradient magnitude vs layer (log scale), runs on shared axes
    (the paper's Fig. 5c); the legend gives the early-layer excess (mean of the first 10 % of
    layers / median). variable: ``layer_grad_norm`` (‖∂loss/∂ the layer's output‖) or
    ``param_grad_norm`` (the layer's own weights)."""
    if gradient_analysis.GRADIENT_VARIABLES.get(variable) != "layer":
        raise AnalysisError(
            f"variable={variable!r} is not a per-layer gradient; use layer_grad_norm or "
            "param_grad_norm"
        )

    def describe(profile: xr.DataArray) -> str:
        excess = gradient_analysis.early_excess(profile, "layer")
        return f"early excess {float(excess):.2f}"

    fig = _layer_profile_figure(
        runs,
        variable,
        "the gradient-magnitude figure",
        describe,
        "grad norm",
        step,
        fraction,
        seeds,
    )
    what = (
        "‖∂loss/∂ layer output‖₂" if variable == "layer_grad_norm" else "‖∂loss/∂ layer weights‖₂"
    )
    return apply_style(
        fig,
        "Gradient magnitude per layer<br><sup>early excess: mean over the first 10 % of layers "
        "/ median over layers</sup>",
        "transformer layer",
        f"{what} (L2 norm over the batch)",
        log_y=True,
    )


def _over_training(
    runs: Runs,
    series: dict[str, Callable[[xr.Dataset], xr.DataArray]],
    what: str,
    y_label: str,
) -> go.Figure:
    """One line per run and per series (told apart by dash) over recorded steps."""
    runs = as_runs(runs)
    colours = run_colours(list(runs))
    fig = go.Figure()
    errors = []
    for name, ds in runs.items():
        for j, (label, make) in enumerate(series.items()):
            try:
                values = make(ds)
            except AnalysisError as err:
                errors.append(str(err))
                continue
            fig.add_trace(
                go.Scatter(
                    x=values["step"].values,
                    y=np.asarray(values.values, dtype=float),
                    mode="lines",
                    name=f"{name} · {label}",
                    legendgroup=name,
                    line={"color": colours[name], "dash": DASHES[j % len(DASHES)]},
                    hovertemplate=f"<b>{name}</b> · {label}<br>step %{{x}}<br>"
                    f"{y_label}: %{{y:.3f}}<extra></extra>",
                )
            )
    if not fig.data:
        raise AnalysisError(f"{what}: {errors[0] if errors else 'no recorded steps'}")
    return fig


def growth_over_training(
    runs: Runs, step: int | None = None, window: int | None = None
) -> go.Figure:
    """The growth exponent with depth of ``layer_output_rms`` (solid) and ``hidden_rms``
    (dashed) at every recorded step, or per ``window`` of recorded steps. ``step`` is unused."""
    series = {
        variable: (
            lambda ds, v=variable: dilution_analysis.growth_over_training(ds, v, window)["exponent"]
        )
        for variable in ("layer_output_rms", "hidden_rms")
    }
    fig = _over_training(runs, series, "growth over training", "exponent")
    fig.add_hline(y=0, line={"color": "#999999", "width": 1})
    return apply_style(
        fig,
        "Growth exponent with depth over training<br><sup>slope of log magnitude vs log depth;"
        " 0 = flat</sup>",
        "optimiser step",
        "growth exponent (1)",
    )


def excess_over_training(
    runs: Runs, step: int | None = None, window: int | None = None
) -> go.Figure:
    """The early-layer gradient excess of ``layer_grad_norm`` (solid) and ``param_grad_norm``
    (dashed) at every recorded step, or per ``window`` of recorded steps. ``step`` is
    unused."""
    series = {
        variable: (lambda ds, v=variable: gradient_analysis.excess_over_training(ds, v, window))
        for variable in ("layer_grad_norm", "param_grad_norm")
    }
    fig = _over_training(runs, series, "early gradient excess over training", "excess")
    fig.add_hline(y=1, line={"color": "#999999", "width": 1})
    return apply_style(
        fig,
        "Early-layer gradient excess over training<br><sup>mean over the first 10 % of layers / "
        "median; 1 = the first layers get a typical gradient</sup>",
        "optimiser step",
        "early excess (ratio)",
    )
