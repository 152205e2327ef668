"""Profiles across depth: stream RMS, relative update and gradient norm per sublayer.

Each run (or seed group, as mean ± one standard deviation) is one line against depth, taken at
``step`` (the recorded step nearest it) or, by default, averaged over the last ``fraction`` of
recorded steps; the title says which. ``steps`` overlays several steps of training instead, in a
sequential colour scale (early light, late dark).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.colors import sample_colorscale

from attnres_probe.analysis import dilution as dilution_analysis
from attnres_probe.analysis import gradients as gradient_analysis
from attnres_probe.analysis.select import DEFAULT_FRACTION, snapshot
from attnres_probe.figures.style import (
    BAND_ALPHA,
    DASHES,
    Runs,
    Series,
    finish,
    integer_ticks,
    rgba,
    run_series,
    site_labels,
)

STEP_SCALE = "Viridis_r"  # early steps light (yellow), late steps dark (purple)
Values = Callable[[xr.Dataset], xr.DataArray]


def depth_labels(da: xr.DataArray, dim: str) -> list[str]:
    """Labels of the depth positions of ``da``: 'L3.attn' per sublayer, 'L3' per layer."""
    if dim == "sublayer":
        return site_labels(da)
    return [f"L{int(v)}" for v in da[dim].values]


def _depth_dim(da: xr.DataArray) -> str:
    return next(d for d in da.dims if d != "step")


def window_note(texts: Sequence[str]) -> str:
    """The window the figure shows, once when every line shares it."""
    unique = list(dict.fromkeys(t for t in texts if t))
    if not unique:
        return ""
    return unique[0] if len(unique) == 1 else "per run: " + "; ".join(unique)


def add_series_line(
    fig: go.Figure,
    series: Series,
    profiles: dict[str, xr.DataArray],
    x: np.ndarray,
    labels: list[str] | None,
    y_label: str,
    note: str = "",
    name: str | None = None,
    colour: str | None = None,
    dash: str | None = None,
    row: int | None = None,
    col: int | None = None,
    showlegend: bool = True,
    extra: Sequence[str] | None = None,
    position: str = "step",
) -> None:
    """One legend entry: a single run's line, or a seed group's mean line over a band from the
    lowest to the highest of its seeds at each point.

    ``labels`` name the points (e.g. 'L3.attn'); None (long series over training) names them
    ``position`` and x ('step 40') without sending a label per point. The line trace carries
    ``meta`` {table: its column, position, seeds}, ``text`` the labels and, for a seed group,
    customdata [min, max]: what :func:`attnres_probe.figures.figure_table` reads back.
    ``extra`` is one more hover line per point.
    """
    name = name or series.label
    colour = colour or series.colour
    dash = dash or series.dash
    stack = np.stack([np.asarray(p.values, dtype=float) for p in profiles.values()])
    n = stack.shape[0]
    with warnings.catch_warnings():  # all-NaN columns (absent sources) stay NaN quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(stack, axis=0) if n > 1 else stack[0]
        lo, hi = (np.nanmin(stack, axis=0), np.nanmax(stack, axis=0)) if n > 1 else (None, None)
    where = {"row": row, "col": col} if row is not None else {}
    if n > 1:
        for edge, fill in ((hi, None), (lo, "tonexty")):
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=edge,
                    mode="lines",
                    line={"width": 0, "color": colour},
                    fill=fill,
                    fillcolor=rgba(colour, BAND_ALPHA),
                    hoverinfo="skip",
                    showlegend=False,
                    legendgroup=name,
                ),
                **where,
            )
    point = "%{text}" if labels is not None else f"{position} %{{x}}"
    spread = (
        f" (seeds %{{customdata[0]:.3g}} to %{{customdata[1]:.3g}}, {n} seeds)" if n > 1 else ""
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=mean,
            mode="lines+markers",
            name=name,
            legendgroup=name,
            showlegend=showlegend,
            line={"color": colour, "dash": dash, "width": 2},
            marker={"size": 5},
            text=list(labels) if labels is not None else None,
            hovertext=list(extra) if extra is not None else None,
            customdata=np.stack([lo, hi], axis=-1) if n > 1 else None,
            meta={"table": name, "position": position, "seeds": n},
            hovertemplate=f"<b>{name}</b><br>{point}<br>{y_label}: %{{y:.4g}}{spread}<br>"
            f"{'%{hovertext}<br>' if extra is not None else ''}{note}<extra></extra>",
        ),
        **where,
    )


def depth_lines(
    runs: Runs,
    values: Values,
    y_label: str,
    step: int | None = None,
    steps: Sequence[int] | None = None,
    fraction: float = DEFAULT_FRACTION,
    seeds: str = "band",
    describe: Callable[[xr.DataArray], str] | None = None,
) -> tuple[go.Figure, str]:
    """One line per run or seed group of a [step, depth] variable against depth (or one per
    step in ``steps``, coloured along training); returns the figure and its window note.
    ``describe(mean profile)`` adds a figure's headline number to each legend entry."""
    series = run_series(runs, "each" if steps else seeds)
    fig = go.Figure()
    longest, notes = [""], []
    for k, s in enumerate(series):
        data = {lab: values(ds) for lab, ds in s.members.items()}
        dim = _depth_dim(next(iter(data.values())))
        picks: Sequence[int | None] = steps or [step]
        colours = sample_colorscale(STEP_SCALE, np.linspace(0.15, 1.0, len(picks)))
        for j, pick in enumerate(picks):
            profiles = {lab: snapshot(da, pick, fraction) for lab, da in data.items()}
            first = next(iter(profiles.values()))
            labels = depth_labels(first, dim)
            longest = labels if len(labels) > len(longest) else longest
            note = first.attrs.get("steps", "")
            notes.append(note)
            if steps:
                shown = f"{s.label} · {note}" if len(series) > 1 else note
                add_series_line(
                    fig,
                    s,
                    profiles,
                    first[dim].values,
                    labels,
                    y_label,
                    note,
                    name=shown,
                    colour=colours[j],
                    dash=DASHES[k % len(DASHES)],
                )
            else:
                name = s.label
                if describe is not None:
                    mean = first.copy(data=np.nanmean([p.values for p in profiles.values()], 0))
                    name = f"{s.label} · {describe(mean)}"
                add_series_line(
                    fig, s, profiles, first[dim].values, labels, y_label, note, name=name
                )
    integer_ticks(fig, len(longest), longest)
    return fig, "" if steps else window_note(notes)


def titled(title: str, note: str) -> str:
    return f"{title}<br><sup>{note}</sup>" if note else title


def dilution(
    runs: Runs,
    step: int | None = None,
    steps: Sequence[int] | None = None,
    fraction: float = DEFAULT_FRACTION,
    log_y: bool = False,
    seeds: str = "band",
) -> go.Figure:
    """Stream RMS entering each sublayer vs depth, one line per run or seed group (and per step
    in ``steps``)."""
    fig, note = depth_lines(
        runs, dilution_analysis.stream_rms, "stream RMS", step, steps, fraction, seeds
    )
    return finish(
        fig,
        titled("PreNorm dilution: stream RMS vs depth", note),
        "sublayer (in depth order)",
        "stream RMS entering the sublayer",
        log_y,
    )


def relative_update(
    runs: Runs,
    step: int | None = None,
    steps: Sequence[int] | None = None,
    fraction: float = DEFAULT_FRACTION,
    seeds: str = "band",
) -> go.Figure:
    """Each sublayer's update RMS relative to its input stream RMS vs depth (log scale)."""
    fig, note = depth_lines(
        runs, dilution_analysis.relative_update, "update/stream", step, steps, fraction, seeds
    )
    return finish(
        fig,
        titled("Relative update: how much each sublayer changes its input", note),
        "sublayer (in depth order)",
        "update RMS / stream RMS",
        log_y=True,
    )


def grad_depth(
    runs: Runs,
    step: int | None = None,
    steps: Sequence[int] | None = None,
    fraction: float = DEFAULT_FRACTION,
    seeds: str = "band",
) -> go.Figure:
    """Gradient norm w.r.t. each sublayer's output vs depth (log scale)."""
    fig, note = depth_lines(
        runs, gradient_analysis.gradient_norms, "grad norm", step, steps, fraction, seeds
    )
    return finish(
        fig,
        titled("Gradients across depth", note),
        "sublayer (in depth order)",
        "‖∂loss/∂output‖₂",
        log_y=True,
    )
