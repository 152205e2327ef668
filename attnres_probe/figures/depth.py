"""Depth attention of AttnRes runs: weight heatmaps (interleaved, or the paper's Pre-Attn /
Pre-MLP panels), entropy per sublayer, and the mass each source receives beside its gradient."""

from __future__ import annotations

import warnings

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from attnres_probe.analysis import depth as depth_analysis
from attnres_probe.analysis.select import DEFAULT_FRACTION, AnalysisError, snapshot
from attnres_probe.figures.profiles import add_series_line, window_note
from attnres_probe.figures.style import (
    Labelled,
    Runs,
    as_runs,
    finish,
    grid,
    heatmap_height,
    integer_ticks,
    label_log_axes,
    plot_text,
    run_series,
    site_labels,
)


def _attnres_runs(runs: Runs, what: str) -> Labelled:
    runs = as_runs(runs)
    kept = Labelled((n, ds) for n, ds in runs.items() if "depth_weights" in ds.data_vars)
    if not kept:
        raise AnalysisError(
            f"{what} needs a full or block AttnRes run; {', '.join(runs)} recorded no depth weights"
        )
    return kept


def _group_mean(arrays: list[xr.DataArray]) -> xr.DataArray:
    """The element-wise mean of a seed group's arrays (NaN where a source is absent)."""
    if len(arrays) == 1:
        return arrays[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = xr.concat(arrays, dim="run", join="override").mean("run", skipna=True)
    out.attrs = arrays[0].attrs
    return out


def _columns(panel: xr.DataArray) -> list:
    """Column positions: numbers stay numbers (a step axis gets a few ticks), names are text."""
    values = panel.coords[panel.dims[1]].values
    if np.issubdtype(values.dtype, np.number):
        return values.tolist()
    return [plot_text(str(c)) for c in values]


def heatmap_panels(
    panels: list[tuple[str, xr.DataArray]],
    x_title: str,
    y_title: str,
    coloraxis: dict,
    hover: str,
    max_cols: int = 3,
) -> go.Figure:
    """Small multiples of [row, column] heatmaps, each row labelled, titles and labels never
    overprinting: at most ``max_cols`` side by side, every row :data:`ROW_PX` tall, row labels
    drawn once per panel row when every panel has the same rows."""
    n_rows, n_cols = grid(len(panels), max_cols)
    row_labels = [list(map(str, p.coords[p.dims[0]].values)) for _, p in panels]
    shared = all(r == row_labels[0] for r in row_labels)
    longest = max(len(r) for r in row_labels)
    height = heatmap_height(longest, n_rows)
    fig = make_subplots(
        rows=n_rows,
        cols=n_cols,
        subplot_titles=[title for title, _ in panels],
        horizontal_spacing=0.03 if shared else min(0.12, 0.5 / n_cols),
        vertical_spacing=min(0.3, 110 / height),
    )
    for i, (title, panel) in enumerate(panels):
        row, col = divmod(i, n_cols)
        fig.add_trace(
            go.Heatmap(
                z=panel.values.astype(float),
                x=_columns(panel),
                y=row_labels[i],
                coloraxis="coloraxis",
                name=title,
                hovertemplate=f"<b>{title}</b><br>{hover}<extra></extra>",
                xgap=0.5,
                ygap=0.5,
            ),
            row=row + 1,
            col=col + 1,
        )
        fig.update_yaxes(
            autorange="reversed",
            tickmode="array",
            tickvals=row_labels[i],
            tickfont={"size": 10},
            showticklabels=not shared or col == 0,
            title_text=y_title if col == 0 else None,
            row=row + 1,
            col=col + 1,
        )
        columns = _columns(panel)
        if not isinstance(columns[0], str):  # numbers (steps): a handful of ticks
            fig.update_xaxes(nticks=6, row=row + 1, col=col + 1)
        else:  # names: every one shown, read sideways
            fig.update_xaxes(
                tickmode="array", tickvals=columns, tickangle=-90, row=row + 1, col=col + 1
            )
        fig.update_xaxes(tickfont={"size": 10}, row=row + 1, col=col + 1)
    for col in range(n_cols):
        fig.update_xaxes(title_text=x_title, row=n_rows, col=col + 1)
    for note in fig.layout.annotations:  # panel titles: small and left-aligned, above the plot
        note.update(font={"size": 13})
    fig.update_layout(coloraxis=coloraxis, height=height)
    return fig


HEATMAP_LAYOUTS = ("interleaved", "by-kind")
WEIGHT_COLOURS = {
    "colorscale": "Viridis",
    "cmin": 0,
    "cmax": 1,
    "colorbar": {"title": {"text": "weight"}, "thickness": 14, "len": 0.5},
}


def depth_heatmap(
    runs: Runs,
    step: int | None = None,
    fraction: float = DEFAULT_FRACTION,
    include_output: bool = True,
    seeds: str = "band",
    layout: str = "interleaved",
) -> go.Figure:
    """Mean depth-attention weights, one panel per AttnRes run (or seed group, averaged over
    its seeds); baseline runs have none and are left out. Blank cells are sources that do not
    exist yet at that depth.

    layout: ``interleaved`` (one row per reader sublayer in depth order, the output last) or
    ``by-kind`` (the paper's Fig. 8: a Pre-Attn and a Pre-MLP panel per run, rows the consumer
    layer, columns the source; the output op is not shown)."""
    if layout not in HEATMAP_LAYOUTS:
        raise AnalysisError(f"layout={layout!r} is not one of {', '.join(HEATMAP_LAYOUTS)}")
    all_names = list(as_runs(runs))
    kept = _attnres_runs(runs, "the depth heatmap")
    panels, notes = [], []
    for s in run_series(kept, seeds):
        weights = [
            depth_analysis.mean_depth_weights(ds, step, fraction, include_output)
            for ds in s.members.values()
        ]
        w = _group_mean(weights).transpose("sublayer", "source")
        notes.append(w.attrs.get("steps", ""))
        title = s.label if not s.is_group else f"{s.label}: mean"
        if layout == "interleaved":
            panels.append((title, w.assign_coords(sublayer=site_labels(w))))
            continue
        by_kind = depth_analysis.weights_by_kind(w)
        for var, kind in (("pre_attn", "Pre-Attn"), ("pre_mlp", "Pre-MLP")):
            p = by_kind[var].transpose("layer", "source")
            panels.append(
                (
                    f"{title} · {kind}",
                    p.assign_coords(layer=[f"L{int(v)}" for v in p["layer"].values]),
                )
            )
    interleaved = layout == "interleaved"
    fig = heatmap_panels(
        panels,
        "source (embedding, then earlier sublayers or blocks)",
        "reader (sublayer; last row: model output)" if interleaved else "consumer layer",
        WEIGHT_COLOURS,
        "%{y} reads %{x}<br>weight %{z:.3f}",
        max_cols=3 if interleaved else 2,
    )
    skipped = [n for n in all_names if n not in kept]
    sub = [window_note(notes)] + ([f"no depth weights: {', '.join(skipped)}"] if skipped else [])
    what = "mean softmax weight of each source" + ("" if interleaved else ", by sublayer kind")
    title = f"Depth attention: {what}<br><sup>" + " · ".join(t for t in sub if t) + "</sup>"
    return finish(fig, title, legend=False, height=fig.layout.height)


def mass_received(
    runs: Runs,
    step: int | None = None,
    fraction: float = DEFAULT_FRACTION,
    seeds: str = "band",
) -> go.Figure:
    """Depth-attention mass each source receives (Σ over its readers of their mean weight) by
    the source's depth (left; a seed group's mean with its seeds' band), and each source's
    gradient norm against it (right, log-log, every run's points); the right panel's title
    gives Spearman ρ of mass vs gradient. Block AttnRes's ``partial`` column mixes different
    partial sums and is left out."""
    kept = _attnres_runs(runs, "the mass-received figure")
    series = run_series(kept, seeds)
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1)
    rhos, notes = [], []
    for s in series:
        mass, points = {}, []
        for lab, ds in s.members.items():
            both = depth_analysis.mass_and_gradient(ds, step, fraction)
            index = depth_analysis.source_sublayer(ds).values
            names = [str(n) for n in both["source"].values]
            # A source's depth: the embedding 0, a sublayer's update (or a block ending with
            # it) the sublayer's position + 1; partial sums have none.
            keep = [i for i, n in enumerate(names) if n == "emb" or index[i] >= 0]
            depth = np.asarray([0 if names[i] == "emb" else index[i] + 1 for i in keep])
            m = xr.DataArray(np.asarray(both["mass_received"].values, float)[keep], dims="d")
            mass[lab] = m.assign_coords(d=depth)
            grad = np.asarray(both["grad_norm"].values, dtype=float)[keep]
            points.append((lab, m.values, grad, [plot_text(names[i]) for i in keep]))
            rhos.append((lab, both.attrs["spearman"]))
            notes.append(both.attrs.get("steps", ""))
        first = next(iter(mass.values()))
        labels = [
            f"{lab} (depth {d})" for lab, d in zip(points[0][3], first["d"].values, strict=True)
        ]
        add_series_line(fig, s, mass, first["d"].values, labels, "mass received", "", row=1, col=1)
        for lab, m, grad, names in points:
            fig.add_trace(
                go.Scatter(
                    x=m,
                    y=grad,
                    mode="markers",
                    name=s.label,
                    legendgroup=s.label,
                    showlegend=False,
                    marker={"color": s.colour, "size": 7, "opacity": 0.85},
                    customdata=names,
                    hovertemplate=f"<b>{lab}</b> %{{customdata}}<br>mass received %{{x:.3f}}<br>"
                    "gradient norm %{y:.4g}<extra></extra>",
                ),
                row=1,
                col=2,
            )
    rho_text = ", ".join(f"{lab} {r:+.2f}" for lab, r in rhos if r == r) or "n/a"
    fig = finish(
        fig,
        "Depth-attention mass received, beside each source's gradient"
        f"<br><sup>{window_note(notes)} · Spearman ρ of mass vs gradient: {rho_text}</sup>",
        None,
        None,
    )
    fig.update_xaxes(title_text="source depth (0 = embedding)", row=1, col=1)
    fig.update_yaxes(title_text="Σ over readers of the mean weight", row=1, col=1)
    fig.update_xaxes(title_text="mass received", type="log", row=1, col=2)
    fig.update_yaxes(title_text="‖∂loss/∂ source‖₂", type="log", row=1, col=2)
    label_log_axes(fig)
    return fig


def depth_entropy(
    runs: Runs,
    step: int | None = None,
    fraction: float = DEFAULT_FRACTION,
    of: str = "tokens",
    seeds: str = "band",
) -> go.Figure:
    """Normalised depth-attention entropy per sublayer (1 = uniform over available sources),
    one line per AttnRes run or seed group; hover gives the effective number of sources."""
    kept = _attnres_runs(runs, "the depth-entropy figure")
    fig = go.Figure()
    notes, longest = [], [""]
    for s in run_series(kept, seeds):
        entropies = {
            lab: depth_analysis.depth_entropy(ds, of=of, include_output=True)
            for lab, ds in s.members.items()
        }
        profiles = {
            lab: snapshot(e["normalised_entropy"], step, fraction) for lab, e in entropies.items()
        }
        effective = np.mean(
            [snapshot(e["effective_sources"], step, fraction).values for e in entropies.values()],
            axis=0,
        )
        n_sources = next(iter(entropies.values()))["n_sources"].values
        first = next(iter(profiles.values()))
        labels = site_labels(first)
        longest = labels if len(labels) > len(longest) else longest
        note = first.attrs.get("steps", "")
        notes.append(note)
        extra = [
            f"effective sources {e:.2f} of {n}" for e, n in zip(effective, n_sources, strict=True)
        ]
        add_series_line(
            fig,
            s,
            profiles,
            first["sublayer"].values,
            labels,
            "normalised entropy",
            note,
            extra=extra,
        )
    integer_ticks(fig, len(longest), longest)
    fig = finish(
        fig,
        f"Depth-attention entropy ({'per token' if of == 'tokens' else 'of the mean weights'})"
        f"<br><sup>{window_note(notes)}</sup>",
        "sublayer (last point: model output)",
        "entropy / log(sources)",
    )
    fig.update_yaxes(range=[0, 1.05])
    return fig


def token_depth_heatmap(weights: xr.DataArray, title: str) -> go.Figure:
    """One token's depth weights [reader × source] (from a checkpoint run on typed text) as a
    heatmap, every reader row labelled; blank cells are sources the reader cannot see."""
    w = weights.transpose("reader", "source")
    w = w.isel(source=np.flatnonzero(w.notnull().any("reader").values))
    fig = heatmap_panels(
        [(plot_text(title), w)],
        "source",
        "reader (sublayer; last row: model output)",
        {"colorscale": "Viridis", "cmin": 0, "cmax": 1, "colorbar": {"title": {"text": "weight"}}},
        "%{y} reads %{x}<br>weight %{z:.3f}",
    )
    return finish(fig, "Depth weights of one token", legend=False, height=fig.layout.height)
