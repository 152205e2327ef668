"""Profiles across depth (stream RMS, relative update, gradients) and the loss curve."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from attnres_probe.analysis import dilution as dilution_analysis
from attnres_probe.analysis import gradients as gradient_analysis
from attnres_probe.analysis.select import DEFAULT_FRACTION, AnalysisError, snapshot
from attnres_probe.figures.style import (
    DASHES,
    Runs,
    apply_style,
    as_runs,
    integer_ticks,
    run_colours,
    site_labels,
)


def _profile_lines(
    runs: Runs,
    values: Callable[[xr.Dataset], xr.DataArray],
    describe: Callable[[xr.Dataset, xr.DataArray], str],
    y_label: str,
    step: int | None,
    steps: Sequence[int] | None,
    fraction: float,
) -> go.Figure:
    """One line per run (and per step in ``steps``) of a [step, sublayer] variable vs depth."""
    runs = as_runs(runs)
    colours = run_colours(list(runs))
    fig = go.Figure()
    integer_ticks(fig, max(ds.sizes.get("sublayer", 1) for ds in runs.values()))
    for name, ds in runs.items():
        da = values(ds)
        picks = (
            [(s, DASHES[j % len(DASHES)]) for j, s in enumerate(steps)]
            if steps
            else [(step, "solid")]
        )
        for s, dash in picks:
            prof = snapshot(da, s, fraction)
            label = name if not steps else f"{name} · {prof.attrs['steps']}"
            fig.add_trace(
                go.Scatter(
                    x=prof["sublayer"].values,
                    y=prof.values.astype(float),
                    mode="lines+markers",
                    name=f"{label} ({describe(ds, prof)})" if describe else label,
                    legendgroup=name,
                    line={"color": colours[name], "dash": dash},
                    customdata=site_labels(prof),
                    hovertemplate=f"<b>{label}</b><br>%{{customdata}} (sublayer %{{x}})<br>"
                    f"{y_label}: %{{y:.4g}}<br>{prof.attrs['steps']}<extra></extra>",
                )
            )
    return fig


def dilution(
    runs: Runs,
    step: int | None = None,
    steps: Sequence[int] | None = None,
    fraction: float = DEFAULT_FRACTION,
    log_y: bool = False,
) -> go.Figure:
    """Stream RMS entering each sublayer vs depth, one line per run (and per step in
    ``steps``); the legend gives each run's growth exponent and last/first ratio."""

    def describe(ds, prof):
        fit = dilution_analysis.fit_growth(prof)
        return (
            f"exponent {float(fit['exponent']):.2f}, "
            f"last/first {float(fit['last_first_ratio']):.2f}"
        )

    fig = _profile_lines(
        runs, dilution_analysis.stream_rms, describe, "stream RMS", step, steps, fraction
    )
    return apply_style(
        fig,
        "PreNorm dilution: stream RMS vs depth",
        "sublayer (depth order: attn, mlp, …)",
        "RMS of stream entering sublayer (activation units)",
        log_y,
    )


def relative_update(
    runs: Runs,
    step: int | None = None,
    steps: Sequence[int] | None = None,
    fraction: float = DEFAULT_FRACTION,
) -> go.Figure:
    """Each sublayer's update RMS relative to its input stream RMS vs depth (log scale)."""

    def describe(ds, prof):
        return f"mean {float(np.nanmean(prof.values)):.3g}"

    fig = _profile_lines(
        runs, dilution_analysis.relative_update, describe, "update/stream", step, steps, fraction
    )
    return apply_style(
        fig,
        "Relative update: how much each sublayer changes its input",
        "sublayer (depth order: attn, mlp, …)",
        "update RMS / stream RMS (ratio)",
        log_y=True,
    )


def grad_depth(
    runs: Runs,
    step: int | None = None,
    steps: Sequence[int] | None = None,
    fraction: float = DEFAULT_FRACTION,
) -> go.Figure:
    """Gradient norm w.r.t. each sublayer's output vs depth (log scale); the legend gives the
    spread (coefficient of variation, max/min)."""

    def describe(ds, prof):
        s = gradient_analysis.spread(prof, "sublayer")
        return f"CV {float(s['cv']):.2f}, max/min {float(s['max_over_min']):.2f}"

    fig = _profile_lines(
        runs, gradient_analysis.gradient_norms, describe, "grad norm", step, steps, fraction
    )
    return apply_style(
        fig,
        "Gradients across depth",
        "sublayer (depth order: attn, mlp, …)",
        "‖∂loss/∂sublayer output‖₂ (L2 norm over the batch)",
        log_y=True,
    )


def loss(runs: Runs, step: int | None = None) -> go.Figure:
    """Training loss of each recorded step, one line per run. ``step`` is unused."""
    runs = as_runs(runs)
    colours = run_colours(list(runs))
    fig = go.Figure()
    for name, ds in runs.items():
        if "loss" not in ds.data_vars:
            raise AnalysisError(f"run {name!r} recorded no loss")
        fig.add_trace(
            go.Scatter(
                x=ds["step"].values,
                y=ds["loss"].values.astype(float),
                mode="lines",
                name=name,
                line={"color": colours[name]},
                hovertemplate=f"<b>{name}</b><br>step %{{x}}<br>loss %{{y:.4f}}<extra></extra>",
            )
        )
    return apply_style(fig, "Training loss", "optimiser step", "cross-entropy (nats/byte)")
