"""Pruning sensitivity: measured loss increase per removed unit against the cheap proxies."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from attnres_probe.analysis import pruning as pruning_analysis
from attnres_probe.analysis.select import DEFAULT_FRACTION, AnalysisError
from attnres_probe.figures.style import Runs, apply_style, as_runs, run_colours


def pruning(
    runs: Runs,
    step: int | None = None,
    fraction: float = DEFAULT_FRACTION,
    granularity: str | None = None,
    removal: str | None = None,
) -> go.Figure:
    """Measured loss increase when each unit is removed (left) against the cheap proxies
    recorded in training: 1 − cos_in_out (Block Influence) and relative update; the panel
    titles give Spearman ρ of each proxy against the measured increase. ``step`` is unused.

    granularity: layer, sublayer or block; None picks layer, or else the first granularity
    the runs were pruned at. removal: ``mask`` or ``zero``; None takes each run's default
    (mask for AttnRes where stored, zero for a baseline)."""
    runs = as_runs(runs)
    colours = run_colours(list(runs))
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

    def rho_line(proxy: str) -> str:
        values = {
            n: cmp.attrs.get(f"spearman_{proxy}", float("nan")) for n, cmp in compared.items()
        }
        parts = [f"{n} {v:+.2f}" if v == v else f"{n} n/a (< 3 units)" for n, v in values.items()]
        return "Spearman ρ: " + ", ".join(parts)

    fig = make_subplots(
        rows=1,
        cols=3,
        horizontal_spacing=0.08,
        subplot_titles=[
            "loss increase per unit",
            f"vs 1 − cos_in_out (Block Influence)<br><sub>{rho_line('block_influence')}</sub>",
            f"vs relative update<br><sub>{rho_line('relative_update')}</sub>",
        ],
    )
    for name, cmp in compared.items():
        units = [str(u) for u in cmp["unit"].values]
        inc = cmp["prune_loss_increase"].values.astype(float)
        colour = colours[name]
        fig.add_trace(
            go.Bar(
                x=units,
                y=inc,
                name=name,
                legendgroup=name,
                marker_color=colour,
                hovertemplate=f"<b>{name}</b><br>remove %{{x}}<br>"
                "loss +%{y:.4f} nats/byte<extra></extra>",
            ),
            row=1,
            col=1,
        )
        for col, proxy in ((2, "block_influence"), (3, "relative_update")):
            if proxy not in cmp:
                continue
            rho = cmp.attrs.get(f"spearman_{proxy}", float("nan"))
            fig.add_trace(
                go.Scatter(
                    x=cmp[proxy].values.astype(float),
                    y=inc,
                    mode="markers+text",
                    text=units,
                    textposition="top center",
                    name=name,
                    legendgroup=name,
                    showlegend=False,
                    marker={"color": colour, "size": 9},
                    hovertemplate=f"<b>{name}</b> %{{text}}<br>{proxy} %{{x:.4g}}<br>"
                    f"loss +%{{y:.4f}}<br>Spearman ρ = {rho:.3f}<extra></extra>",
                ),
                row=1,
                col=col,
            )
    used = sorted({str(c.attrs["removal"]) for c in compared.values()})
    fig = apply_style(
        fig,
        f"Pruning sensitivity by {granularity} ({' and '.join(used)} removal, held-out loss)",
        "",
        "held-out loss increase (nats/byte)",
    )
    fig.update_xaxes(title_text="unit removed", row=1, col=1)
    fig.update_xaxes(title_text="1 − cos(in, out) (ratio)", row=1, col=2)
    fig.update_xaxes(title_text="Σ update RMS / stream RMS (ratio)", row=1, col=3)
    fig.update_layout(barmode="group", margin={"t": 120})
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
