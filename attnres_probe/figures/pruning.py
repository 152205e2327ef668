"""Pruning sensitivity: measured loss increase per removed unit against the cheap proxies, and
the greedy path of removing the cheapest layers together."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from attnres_probe.analysis import pruning as pruning_analysis
from attnres_probe.analysis.select import DEFAULT_FRACTION, AnalysisError
from attnres_probe.figures.profiles import add_series_line
from attnres_probe.figures.style import (
    Labelled,
    Runs,
    Series,
    as_runs,
    finish,
    number,
    run_series,
)

LABELLED = 3  # scatter points named on the plot: the units whose removal costs most
PROXIES = (
    ("block_influence", "1 − cos(in, out) (Block Influence)"),
    ("relative_update", "Σ update RMS / stream RMS"),
)


def _rho_text(series: Series, compared: dict, proxy: str) -> str:
    values = [compared[lab].attrs.get(f"spearman_{proxy}", np.nan) for lab in series.members]
    values = [v for v in values if v == v]
    if not values:
        return f"{series.label} n/a"
    if len(values) == 1:
        return f"{series.label} {values[0]:+.2f}"
    return f"{series.label} {np.mean(values):+.2f} ± {np.std(values, ddof=1):.2f}"


def pruning(
    runs: Runs,
    step: int | None = None,
    fraction: float = DEFAULT_FRACTION,
    granularity: str | None = None,
    seeds: str = "band",
    removal: str | None = None,
) -> go.Figure:
    """Measured loss increase when each unit is removed (left; a seed group's mean with its
    std as error bar) against the cheap proxies recorded in training: 1 − cos_in_out (Block
    Influence) and relative update; the panel titles give Spearman ρ of each proxy against the
    measured increase. Only the few costliest units are named on the plot; hover names every
    point. ``step`` is unused.

    granularity: layer, sublayer or block; None picks layer, or else the first granularity
    the runs were pruned at. removal: ``mask`` or ``zero``; None takes each run's default
    (mask for AttnRes where stored, zero for a baseline)."""
    runs = as_runs(runs)
    if granularity is None:
        granularity = _stored_granularity(runs.values())
    compared = {}
    for name, ds in runs.items():
        try:
            compared[name] = pruning_analysis.compare_with_proxies(
                ds, granularity, fraction, removal
            )
        except AnalysisError:
            if len(runs) == 1:
                raise
    if not compared:
        raise AnalysisError(
            f"none of {', '.join(runs)} has pruning results by {granularity}; run "
            f"`attnres-probe prune RUN --granularity {granularity}` first (runs with a "
            f"checkpoint), or {pruning_analysis.NO_CHECKPOINT_HINT}"
        )
    series = run_series(Labelled((n, runs[n]) for n in compared), seeds)
    rho_lines = {
        proxy: "<br>".join(
            f'<span style="color:{s.colour}">{_rho_text(s, compared, proxy)}</span>' for s in series
        )
        for proxy, _ in PROXIES
    }
    fig = make_subplots(
        rows=2,
        cols=2,
        specs=[[{"colspan": 2}, None], [{}, {}]],
        horizontal_spacing=0.1,
        vertical_spacing=0.16 + 0.025 * len(series),
        row_heights=[0.45, 0.55],
        subplot_titles=[
            "loss increase per removed unit",
            *(f"vs {label}: Spearman ρ<br>{rho_lines[proxy]}" for proxy, label in PROXIES),
        ],
    )
    every = np.concatenate([c["prune_loss_increase"].values for c in compared.values()])
    cutoff = np.sort(every[np.isfinite(every)])[-LABELLED:].min() if every.size else np.inf
    for s in series:
        members = [compared[lab] for lab in s.members]
        units = [str(u) for u in members[0]["unit"].values]
        inc = np.stack([c["prune_loss_increase"].values.astype(float) for c in members])
        spread = inc.std(axis=0, ddof=1) if len(members) > 1 else None
        fig.add_trace(
            go.Bar(
                x=units,
                y=inc.mean(axis=0),
                error_y={
                    "type": "data",
                    "array": spread,
                    "visible": spread is not None,
                    "color": "#5b6775",
                    "thickness": 1,
                    "width": 2,
                },
                name=s.label,
                legendgroup=s.label,
                marker_color=s.colour,
                hovertemplate=f"<b>{s.label}</b><br>remove %{{x}}<br>"
                "loss +%{y:.4f} nats/byte<extra></extra>",
            ),
            row=1,
            col=1,
        )
        for col, (proxy, _) in enumerate(PROXIES, start=1):
            for lab, cmp in zip(s.members, members, strict=True):
                if proxy not in cmp:
                    continue
                y = cmp["prune_loss_increase"].values.astype(float)
                names = [str(u) for u in cmp["unit"].values]
                fig.add_trace(
                    go.Scatter(
                        x=cmp[proxy].values.astype(float),
                        y=y,
                        mode="markers+text",
                        text=[n if v >= cutoff else "" for n, v in zip(names, y, strict=True)],
                        textposition="middle right",
                        textfont={"size": 11, "color": s.colour},
                        customdata=names,
                        name=s.label,
                        legendgroup=s.label,
                        showlegend=False,
                        marker={"color": s.colour, "size": 8, "opacity": 0.85},
                        hovertemplate=f"<b>{lab}</b> %{{customdata}}<br>{proxy} %{{x:.4g}}<br>"
                        "loss +%{y:.4f}<extra></extra>",
                    ),
                    row=2,
                    col=col,
                )
    used = sorted({str(c.attrs["removal"]) for c in compared.values()})
    fig = finish(
        fig,
        f"Pruning sensitivity by {granularity} ({' and '.join(used)} removal, held-out loss)"
        f"<br><sup>named on the plot: the {LABELLED} costliest removals; hover for every unit"
        "</sup>",
        height=820 + 18 * len(series),
    )
    fig.update_xaxes(title_text="unit removed", tickangle=-90, row=1, col=1)
    fig.update_yaxes(title_text="loss increase (nats/byte)", row=1, col=1)
    fig.update_yaxes(title_text="loss increase (nats/byte)", row=2, col=1)
    for col, (_, label) in enumerate(PROXIES, start=1):
        fig.update_xaxes(title_text=label, row=2, col=col)
    fig.update_layout(barmode="group", margin={"t": 100})
    for note in fig.layout.annotations:
        note.update(font={"size": 12})
    if all(
        "block_influence" in c and not np.isfinite(c["block_influence"].values).any()
        for c in compared.values()
    ):
        fig.add_annotation(
            text=f"cos_in_out is recorded per layer:<br>no value for {granularity} units",
            xref="x2 domain",
            yref="y2 domain",
            x=0.5,
            y=0.5,
            showarrow=False,
        )
    return fig


def _stored_granularity(datasets) -> str:
    """The coarsest granularity any run has results for (layer, then block, then sublayer)."""
    found: list[str] = []
    for ds in datasets:
        try:
            found += pruning_analysis.pruning_results(ds, None)["granularity"].values.tolist()
        except AnalysisError:
            continue
    return next((g for g in ("layer", "block", "sublayer") if g in found), "layer")


def _path_increase(ds) -> tuple[np.ndarray, list[str]]:
    """Relative held-out loss increase along the stored greedy path, and the layer added at
    each point."""
    found = pruning_analysis.path(ds)
    return found["relative_increase"].values, [str(u) for u in found["unit"].values]


def prune_path(runs: Runs, step: int | None = None, seeds: str = "band") -> go.Figure:
    """Held-out loss when the 1, 2, … cheapest layers (ranked by their single-layer cost) are
    removed together, relative to the intact model, one line per run or seed group; the dotted
    line is the 1 % bound. ``step`` is unused."""
    runs = as_runs(runs)
    paths, skipped = {}, []
    for name, ds in runs.items():
        try:
            paths[name] = _path_increase(ds)
        except AnalysisError:
            skipped.append(name)
    if not paths:
        raise AnalysisError(
            f"none of {', '.join(runs)} has a greedy pruning path; the demo makes one, or "
            "attnres_probe.tools.prune_path.prune_path(RUN)"
        )
    fig = go.Figure()
    longest = 1
    for s in run_series(Labelled((n, runs[n]) for n in paths), seeds):
        rel = {lab: xr.DataArray(100 * paths[lab][0], dims="n") for lab in s.members}
        first = next(iter(s.members))
        n = np.arange(1, rel[first].size + 1)
        order = paths[first][1]
        labels = [f"{k} removed (last: {u})" for k, u in zip(n, order, strict=True)]
        add_series_line(fig, s, rel, n, labels, "loss increase %", "greedy path")
        longest = max(longest, n.size)
    fig.add_hline(
        y=100 * pruning_analysis.DEFAULT_TOLERANCE,
        line={"dash": "dot", "color": "#5b6775"},
        annotation_text=f"{number(100 * pruning_analysis.DEFAULT_TOLERANCE)} %",
        annotation_position="top left",
    )
    note = "held-out loss over the intact model's; layers ranked by their single-layer cost"
    if skipped:
        note += f" · no path: {', '.join(skipped)}"
    fig = finish(
        fig,
        f"Greedy pruning path: layers removed together<br><sup>{note}</sup>",
        "layers removed together",
        "loss increase (%)",
    )
    fig.update_xaxes(dtick=1 if longest <= 20 else None)
    return fig
