"""Depth attention of AttnRes runs: weight heatmaps and entropy per sublayer."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from attnres_probe.analysis import depth as depth_analysis
from attnres_probe.analysis.select import DEFAULT_FRACTION, AnalysisError, snapshot
from attnres_probe.figures.style import (
    Runs,
    apply_style,
    as_runs,
    integer_ticks,
    plot_text,
    run_colours,
    site_labels,
)


def _attnres_runs(runs: Runs, what: str) -> dict[str, xr.Dataset]:
    runs = as_runs(runs)
    kept = {n: ds for n, ds in runs.items() if "depth_weights" in ds.data_vars}
    if not kept:
        raise AnalysisError(
            f"{what} needs a full or block AttnRes run; {', '.join(runs)} recorded no depth weights"
        )
    return kept


def depth_heatmap(
    runs: Runs,
    step: int | None = None,
    fraction: float = DEFAULT_FRACTION,
    include_output: bool = True,
) -> go.Figure:
    """Mean depth-attention weights [sublayer × source], one heatmap per AttnRes run side by
    side (baseline runs have none and are left out); blank cells are sources not available."""
    all_names = list(as_runs(runs))
    runs = _attnres_runs(runs, "the depth heatmap")
    weights = {
        n: depth_analysis.mean_depth_weights(ds, step, fraction, include_output)
        for n, ds in runs.items()
    }
    fig = make_subplots(
        rows=1,
        cols=len(runs),
        subplot_titles=[f"{n} · {w.attrs['steps']}" for n, w in weights.items()],
        horizontal_spacing=0.12 if len(runs) > 1 else 0.0,
    )
    for col, (name, w) in enumerate(weights.items(), start=1):
        w = w.transpose("sublayer", "source")
        fig.add_trace(
            go.Heatmap(
                z=w.values.astype(float),
                x=[plot_text(str(s)) for s in w["source"].values],
                y=site_labels(w),
                coloraxis="coloraxis",
                name=name,
                hovertemplate=f"<b>{name}</b><br>sublayer %{{y}} reads %{{x}}<br>"
                "weight %{z:.3f}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text="source", row=1, col=col, tickangle=-45)
        fig.update_yaxes(autorange="reversed", row=1, col=col)
    fig.update_yaxes(title_text="sublayer (reader)", row=1, col=1)
    skipped = [n for n in all_names if n not in runs]
    title = "Depth attention: mean softmax weight of each source"
    if skipped:
        title += f"<br><sup>no depth weights: {', '.join(skipped)}</sup>"
    fig.update_layout(
        title={"text": title, "x": 0.01},
        template="plotly_white",
        coloraxis={
            "colorscale": "Viridis",
            "cmin": 0,
            "cmax": 1,
            "colorbar": {"title": {"text": "weight"}},
        },
        margin={"l": 90, "r": 20, "t": 80, "b": 90},
    )
    return fig


def depth_entropy(
    runs: Runs,
    step: int | None = None,
    fraction: float = DEFAULT_FRACTION,
    of: str = "tokens",
) -> go.Figure:
    """Normalised depth-attention entropy per sublayer (1 = uniform over available sources),
    one line per AttnRes run; hover gives the effective number of sources exp(H)."""
    runs = _attnres_runs(runs, "the depth-entropy figure")
    colours = run_colours(list(runs))
    fig = go.Figure()
    integer_ticks(fig, max(ds.sizes["sublayer"] + 1 for ds in runs.values()))
    for name, ds in runs.items():
        ent = depth_analysis.depth_entropy(ds, of=of, include_output=True)
        norm = snapshot(ent["normalised_entropy"], step, fraction)
        eff = snapshot(ent["effective_sources"], step, fraction)
        custom = np.stack(
            [
                np.asarray(site_labels(norm), dtype=object),
                eff.values.astype(float),
                ent["n_sources"].values,
            ],
            axis=-1,
        )
        fig.add_trace(
            go.Scatter(
                x=norm["sublayer"].values,
                y=norm.values.astype(float),
                mode="lines+markers",
                name=f"{name} (mean {float(np.nanmean(norm.values)):.2f})",
                line={"color": colours[name]},
                customdata=custom,
                hovertemplate=f"<b>{name}</b><br>%{{customdata[0]}} (sublayer %{{x}})<br>"
                "normalised entropy %{y:.3f}<br>effective sources %{customdata[1]:.2f} "
                f"of %{{customdata[2]}}<br>{norm.attrs['steps']}<extra></extra>",
            )
        )
    fig = apply_style(
        fig,
        f"Depth-attention entropy ({'per token' if of == 'tokens' else 'of the mean weights'})",
        "sublayer (last point: model output)",
        "entropy / log(available sources) (0 = one source, 1 = uniform)",
    )
    fig.update_yaxes(range=[0, 1.05])
    return fig
