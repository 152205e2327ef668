"""Depth attention of AttnRes runs: weight heatmaps (interleaved, or the paper's Pre-Attn /
Pre-MLP panels), entropy per sublayer, and the mass each source receives beside its gradient."""

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


HEATMAP_LAYOUTS = ("interleaved", "by-kind")


def depth_heatmap(
    runs: Runs,
    step: int | None = None,
    fraction: float = DEFAULT_FRACTION,
    include_output: bool = True,
    layout: str = "interleaved",
) -> go.Figure:
    """Mean depth-attention weights [sublayer × source], one heatmap per AttnRes run side by
    side (baseline runs have none and are left out); blank cells are sources not available.

    layout: ``interleaved`` (one row per sublayer in depth order, the output last) or
    ``by-kind`` (the paper's Fig. 8: a Pre-Attn and a Pre-MLP panel per run, rows the consumer
    layer, columns the source; the output op is not shown)."""
    if layout not in HEATMAP_LAYOUTS:
        raise AnalysisError(f"layout={layout!r} is not one of {', '.join(HEATMAP_LAYOUTS)}")
    if layout == "by-kind":
        return _heatmap_by_kind(runs, step, fraction)
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


def _heatmap_by_kind(runs: Runs, step: int | None, fraction: float) -> go.Figure:
    """The paper's layout: per run a row of two heatmaps, Pre-Attn and Pre-MLP [layer, source]."""
    all_names = list(as_runs(runs))
    runs = _attnres_runs(runs, "the depth heatmap")
    panels = {
        n: depth_analysis.weights_by_kind(depth_analysis.mean_depth_weights(ds, step, fraction))
        for n, ds in runs.items()
    }
    titles = [
        f"{n} · {kind} · {p.attrs.get('steps', '')}"
        for n, p in panels.items()
        for kind in ("Pre-Attn", "Pre-MLP")
    ]
    fig = make_subplots(
        rows=len(panels),
        cols=2,
        subplot_titles=titles,
        horizontal_spacing=0.1,
        vertical_spacing=min(0.12, 0.3 / max(1, len(panels) - 1)) if len(panels) > 1 else 0.1,
    )
    for row, (name, p) in enumerate(panels.items(), start=1):
        for col, (var, kind) in enumerate((("pre_attn", "Pre-Attn"), ("pre_mlp", "Pre-MLP")), 1):
            w = p[var].transpose("layer", "source")
            fig.add_trace(
                go.Heatmap(
                    z=w.values.astype(float),
                    x=[plot_text(str(s)) for s in w["source"].values],
                    y=[f"L{int(layer)}" for layer in w["layer"].values],
                    coloraxis="coloraxis",
                    name=f"{name} {kind}",
                    hovertemplate=f"<b>{name}</b><br>{kind} of layer %{{y}} reads %{{x}}<br>"
                    "weight %{z:.3f}<extra></extra>",
                ),
                row=row,
                col=col,
            )
            fig.update_xaxes(tickangle=-45, row=row, col=col)
            fig.update_yaxes(autorange="reversed", row=row, col=col)
        fig.update_yaxes(title_text="consumer layer", row=row, col=1)
    fig.update_xaxes(title_text="source", row=len(panels))
    skipped = [n for n in all_names if n not in runs]
    title = "Depth attention by sublayer kind: mean softmax weight of each source"
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
        height=max(420, 360 * len(panels)),
        margin={"l": 90, "r": 20, "t": 90, "b": 90},
    )
    return fig


def mass_received(
    runs: Runs, step: int | None = None, fraction: float = DEFAULT_FRACTION
) -> go.Figure:
    """Depth-attention mass each source receives (Σ over its readers of their mean weight),
    by the source's depth (left), and each source's gradient norm against it (right, log-log),
    one colour per AttnRes run; the legend gives Spearman ρ of mass vs gradient. Block
    AttnRes's ``partial`` column mixes different partial sums and is left out."""
    runs = _attnres_runs(runs, "the mass-received figure")
    colours = run_colours(list(runs))
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.1,
        subplot_titles=["mass received by each source", "source gradient vs mass received"],
    )
    for name, ds in runs.items():
        both = depth_analysis.mass_and_gradient(ds, step, fraction)
        index = depth_analysis.source_sublayer(ds).values
        names = [str(s) for s in both["source"].values]
        # A source's depth: the embedding 0, a sublayer's update (or a block ending with it)
        # the sublayer's position + 1; partial sums have none.
        keep = [i for i, n in enumerate(names) if n == "emb" or index[i] >= 0]
        x = np.asarray([0 if names[i] == "emb" else index[i] + 1 for i in keep], dtype=float)
        mass = np.asarray(both["mass_received"].values, dtype=float)[keep]
        grad = np.asarray(both["grad_norm"].values, dtype=float)[keep]
        labels = [plot_text(names[i]) for i in keep]
        rho = both.attrs["spearman"]
        colour = colours[name]
        fig.add_trace(
            go.Scatter(
                x=x,
                y=mass,
                mode="lines+markers",
                name=f"{name} (ρ mass vs gradient {rho:+.2f})" if rho == rho else name,
                legendgroup=name,
                line={"color": colour},
                customdata=labels,
                hovertemplate=f"<b>{name}</b><br>%{{customdata}} (depth %{{x}})<br>"
                f"mass received %{{y:.3f}}<br>{both.attrs['steps']}<extra></extra>",
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=mass,
                y=grad,
                mode="markers",
                name=name,
                legendgroup=name,
                showlegend=False,
                marker={"color": colour, "size": 8},
                customdata=labels,
                hovertemplate=f"<b>{name}</b> %{{customdata}}<br>mass received %{{x:.3f}}<br>"
                f"gradient norm %{{y:.4g}}<br>Spearman ρ = {rho:.3f}<extra></extra>",
            ),
            row=1,
            col=2,
        )
    fig = apply_style(
        fig,
        "Depth-attention mass received, beside each source's gradient",
        "",
        "Σ over readers of the mean weight",
    )
    fig.update_xaxes(title_text="source depth (0 = embedding; sublayers produced)", row=1, col=1)
    fig.update_xaxes(title_text="mass received", type="log", row=1, col=2)
    fig.update_yaxes(title_text="‖∂loss/∂ source‖₂", type="log", row=1, col=2)
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
