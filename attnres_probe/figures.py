"""Figures: recorded runs in, ``plotly.graph_objects.Figure`` out — one function per figure.

Every function takes ``runs``: one Dataset, a list of them (named by their ``run_name`` attr)
or a dict name -> Dataset. Line figures overlay the runs; heatmaps lay them side by side. A
run keeps its colour across figures (Okabe–Ito palette, picked from a hash of its name).
Profiles are taken at ``step`` (the nearest recorded one) or, by default, averaged over the
last ``fraction`` of recorded steps. ``FIGURES`` maps the CLI names to the functions.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from attnres_probe.analysis import depth as depth_analysis
from attnres_probe.analysis import dilution as dilution_analysis
from attnres_probe.analysis import gradients as gradient_analysis
from attnres_probe.analysis import pruning as pruning_analysis
from attnres_probe.analysis.select import DEFAULT_FRACTION, AnalysisError, run_name, snapshot

# Okabe & Ito (2008), colour-blind safe; yellow last (weak on white).
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
Runs = xr.Dataset | Mapping[str, xr.Dataset] | Sequence[xr.Dataset]


def as_runs(runs: Runs) -> dict[str, xr.Dataset]:
    """``runs`` as an ordered dict name -> Dataset (duplicate names get a ``#2`` suffix)."""
    if isinstance(runs, xr.Dataset):
        runs = [runs]
    if isinstance(runs, Mapping):
        out = {str(k): v for k, v in runs.items()}
    else:
        out = {}
        for ds in runs:
            name, n = run_name(ds), 2
            while name in out:
                name, n = f"{run_name(ds)} #{n}", n + 1
            out[name] = ds
    if not out:
        raise AnalysisError("no runs given; pass at least one recorded run")
    return out


def run_colours(names: Sequence[str]) -> dict[str, str]:
    """A stable palette colour per run name (hash of the name; the next free one on clashes)."""
    used: set[str] = set()
    out = {}
    for name in names:
        i = zlib.crc32(name.encode()) % (len(OKABE_ITO) - 1)  # yellow only when all else is taken
        while OKABE_ITO[i] in used and len(used) < len(OKABE_ITO):
            i = (i + 1) % len(OKABE_ITO)
        out[name] = OKABE_ITO[i]
        used.add(OKABE_ITO[i])
    return out


def site_labels(da: xr.DataArray) -> list[str]:
    """'L3.attn' style labels for the ``sublayer`` coordinate ('out' for the model output)."""
    kinds = da["kind"].values if "kind" in da.coords else ["attn", "mlp"] * da.sizes["sublayer"]
    layers = da["layer_of"].values if "layer_of" in da.coords else da["sublayer"].values // 2
    return [
        "out" if str(k) == "out" else f"L{int(layer)}.{k}"
        for k, layer in zip(kinds, layers, strict=False)
    ]


def _style(fig: go.Figure, title: str, x_title: str, y_title: str, log_y: bool = False):
    fig.update_layout(
        title={"text": title, "x": 0.01},
        template="plotly_white",
        hovermode="closest",
        legend={"title": {"text": "run"}},
        showlegend=True,
        margin={"l": 70, "r": 20, "t": 90, "b": 60},
    )
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text=y_title, type="log" if log_y else "linear")
    return fig


def _integer_ticks(fig: go.Figure, n: int) -> None:
    """Depth axes count sublayers: whole-number ticks, at most about 16 of them."""
    fig.update_xaxes(tick0=0, dtick=max(1, -(-n // 16)))


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
    _integer_ticks(fig, max(ds.sizes.get("sublayer", 1) for ds in runs.values()))
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
    return _style(
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
    return _style(
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
    return _style(
        fig,
        "Gradients across depth",
        "sublayer (depth order: attn, mlp, …)",
        "‖∂loss/∂sublayer output‖₂ (L2 norm over the batch)",
        log_y=True,
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
                x=[str(s) for s in w["source"].values],
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
        title += f" (no depth weights: {', '.join(skipped)})"
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
    _integer_ticks(fig, max(ds.sizes["sublayer"] + 1 for ds in runs.values()))
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
    fig = _style(
        fig,
        f"Depth-attention entropy ({'per token' if of == 'tokens' else 'of the mean weights'})",
        "sublayer (last point: model output)",
        "entropy / log(available sources) (0 = one source, 1 = uniform)",
    )
    fig.update_yaxes(range=[0, 1.05])
    return fig


def pruning(
    runs: Runs,
    step: int | None = None,
    fraction: float = DEFAULT_FRACTION,
    granularity: str | None = None,
) -> go.Figure:
    """Measured loss increase when each unit is removed (left) against the cheap proxies
    recorded in training: 1 − cos_in_out (Block Influence) and relative update; the panel
    titles give Spearman ρ of each proxy against the measured increase. ``step`` is unused.

    granularity: layer, sublayer or block; None picks layer, or else the first granularity
    the runs were pruned at."""
    runs = as_runs(runs)
    colours = run_colours(list(runs))
    if granularity is None:
        granularity = _stored_granularity(runs.values())
    compared = {}
    for name, ds in runs.items():
        try:
            compared[name] = pruning_analysis.compare_with_proxies(ds, granularity, fraction)
        except AnalysisError:
            if len(runs) == 1:
                raise
    if not compared:
        raise AnalysisError(
            f"none of {', '.join(runs)} has pruning results by {granularity}; run "
            f"`attnres-probe prune RUN --granularity {granularity}` first"
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
    fig = _style(
        fig,
        f"Pruning sensitivity by {granularity} (zero-ablation, held-out loss)",
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
    return _style(fig, "Training loss", "optimiser step", "cross-entropy (nats/byte)")


FIGURES: dict[str, Callable[..., go.Figure]] = {
    "dilution": dilution,
    "relative-update": relative_update,
    "depth-heatmap": depth_heatmap,
    "depth-entropy": depth_entropy,
    "grad-depth": grad_depth,
    "pruning": pruning,
    "loss": loss,
}


def make_figure(name: str, runs: Runs, step: int | None = None) -> go.Figure:
    """The figure called ``name`` (a key of ``FIGURES``) for ``runs``."""
    if name not in FIGURES:
        raise AnalysisError(f"figure {name!r} does not exist; pick one of {', '.join(FIGURES)}")
    return FIGURES[name](runs, step=step)
