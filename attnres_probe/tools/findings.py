"""What each figure shows, in numbers computed from the runs: one sentence per figure.

The report puts :func:`finding` under each figure instead of a fixed caption, so the text
can never contradict the curve it sits under: it names each run's value of the figure's
measure (the same analysis the legend uses) and which run is highest or lowest. A figure's
``DESCRIPTIONS`` entry says only what is plotted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
import xarray as xr

from attnres_probe.analysis import depth, dilution, gradients, pruning
from attnres_probe.analysis.select import AnalysisError, run_name, snapshot

# What each figure plots (never what it should show).
DESCRIPTIONS = {
    "dilution": "RMS of the residual stream entering each sublayer, against depth.",
    "layer-output": "RMS of what each transformer layer hands on (baseline: the stream after "
    "it; Block AttnRes: the block's partial sum after it; Full AttnRes: its last update), "
    "runs differing only in seed as mean with a min–max band.",
    "growth-over-training": "Growth exponent with depth (slope of log magnitude against log "
    "depth) of layer_output_rms (solid) and hidden_rms (dashed) at every recorded step.",
    "relative-update": "Update RMS over stream RMS of each sublayer.",
    "depth-heatmap": "Mean softmax weight each AttnRes sublayer (row) puts on each source "
    "(column); blank cells are sources that do not exist yet.",
    "depth-heatmap-by-kind": "The same weights as separate Pre-Attn and Pre-MLP panels, rows "
    "the consumer layer.",
    "depth-entropy": "Entropy of each sublayer's depth attention over log(available sources): "
    "1 is uniform, 0 one source.",
    "mass-received": "Sum over readers of the mean weight each source receives, and each "
    "source's gradient norm against it.",
    "grad-depth": "Gradient norm with respect to each sublayer's output.",
    "layer-grad": "Gradient norm with respect to what each transformer layer hands on.",
    "layer-param-grad": "Gradient norm of each transformer layer's own weights.",
    "excess-over-training": "Early-layer gradient excess (mean over the first 10 % of layers "
    "/ median) of layer_grad_norm (solid) and param_grad_norm (dashed) at every recorded step.",
    "pruning": "Held-out loss increase when each layer is removed, against the cheap proxies "
    "recorded in training.",
    "loss": "Training loss of every recorded step.",
    "grad-map": "Gradient norm of every sublayer (rows) at every recorded step (columns), one log "
    "colour scale for all runs.",
    "update-map": "Relative update of every sublayer (rows) at every recorded step (columns), one "
    "log colour scale for all runs.",
    "prune-path": "Held-out loss when the cheapest layers, ranked by their single-layer cost, are "
    "removed together, relative to the intact model; the dotted line is the 1 % bound.",
}


def _fmt(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else "–"


def _per_run(
    datasets: Mapping[str, xr.Dataset], measure: Callable[[xr.Dataset], float]
) -> dict[str, float]:
    """``measure`` of every run that can give it (runs lacking a variable are left out)."""
    out = {}
    for name, ds in datasets.items():
        try:
            value = float(measure(ds))
        except (AnalysisError, KeyError):
            continue
        if math.isfinite(value):
            out[name] = value
    return out


def _ranked(
    values: Mapping[str, float], what: str, low: str, high: str | None = None, digits: int = 2
) -> str:
    """'what: a 1.00, b 0.50; flattest: b.' — every run's value, then the run with the lowest
    value named by ``low`` (and the highest by ``high``)."""
    if not values:
        raise AnalysisError(f"no run has {what}")
    listed = ", ".join(f"{n} {_fmt(v, digits)}" for n, v in values.items())
    text = f"{what}: {listed}"
    if len(values) > 1:
        text += f"; {low}: {min(values, key=values.get)}"
        if high:
            text += f"; {high}: {max(values, key=values.get)}"
    return text + "."


def _dilution(datasets):
    values = _per_run(datasets, lambda ds: dilution.growth(ds)["exponent"])
    return _ranked(values, "growth exponent of the stream with depth", "flattest", "grows most")


def _layer_output(datasets):
    values = _per_run(
        datasets, lambda ds: dilution.growth(ds, variable="layer_output_rms")["exponent"]
    )
    text = _ranked(values, "growth exponent of the output with layer depth", "flattest")
    for name, ds in datasets.items():
        if ds.attrs.get("residual") == "block" and "layer_output_rms" in ds.data_vars:
            try:
                p = dilution.block_periodicity(ds)
            except AnalysisError:
                continue
            rise, drop = float(p["within_block_rise"]), float(p["boundary_drop"])
            periodic = rise > 1 and drop < 1
            text += (
                f" {name}: rises ×{_fmt(rise)} within blocks and changes ×{_fmt(drop)} at "
                f"boundaries — {'periodic with the blocks' if periodic else 'not periodic'}."
            )
    return text


def _over_training(datasets, series: dict[str, Callable[[xr.Dataset], xr.DataArray]], what):
    """'what, first → last recorded step: of A: run 1.00 → 0.50; of B: …' for every series
    (a label -> measure over steps) some run has."""
    parts = []
    for label, measure in series.items():
        found = []
        for name, ds in datasets.items():
            try:
                values = np.asarray(measure(ds).values, dtype=float)
            except AnalysisError:
                continue
            finite = values[np.isfinite(values)]
            if finite.size:
                found.append(f"{name} {_fmt(finite[0])} → {_fmt(finite[-1])}")
        if found:
            parts.append(f"of {label}: " + ", ".join(found))
    if not parts:
        raise AnalysisError(f"no run has {what}")
    return f"{what}, first → last recorded step, " + "; ".join(parts) + "."


def _growth_over_training(datasets):
    return _over_training(
        datasets,
        {
            v: (lambda ds, v=v: dilution.growth_over_training(ds, v)["exponent"])
            for v in ("layer_output_rms", "hidden_rms")
        },
        "growth exponent with depth",
    )


def _excess_over_training(datasets):
    return _over_training(
        datasets,
        {
            v: (lambda ds, v=v: gradients.excess_over_training(ds, v))
            for v in ("layer_grad_norm", "param_grad_norm")
        },
        "early-layer gradient excess",
    )


def _relative_update(datasets):
    values = _per_run(
        datasets, lambda ds: np.nanmean(snapshot(dilution.relative_update(ds)).values)
    )
    return _ranked(values, "mean relative update", "smallest", "largest", 3)


def _heatmap(datasets):
    parts = []
    for name, ds in datasets.items():
        if "depth_weights" not in ds.data_vars:
            continue
        top = depth.overall_top_sources(ds, 3)
        parts.append(f"{name}: " + ", ".join(f"{s} {_fmt(v)}" for s, v in top))
    if not parts:
        raise AnalysisError("no run has depth weights")
    return "largest shares of all sublayer inputs — " + "; ".join(parts) + "."


def _entropy(datasets):
    def mean_entropy(ds):
        of = "tokens" if "depth_entropy" in ds.data_vars else "mean"
        ent = depth.depth_entropy(ds, of=of)["normalised_entropy"]
        return np.nanmean(snapshot(ent).values)

    values = _per_run(datasets, mean_entropy)
    return _ranked(values, "mean normalised entropy", "most focused", "closest to uniform", 3)


def _mass(datasets):
    values = _per_run(datasets, lambda ds: depth.mass_and_gradient(ds).attrs["spearman"])
    return _ranked(values, "Spearman ρ of mass received vs source gradient", "weakest")


def _grad_depth(datasets):
    values = _per_run(datasets, lambda ds: gradients.gradient_spread_summary(ds)["cv"])
    return _ranked(
        values,
        "gradient spread CV over sublayers (a diagnostic, not the paper's claim)",
        "flattest",
    )


def _layer_grad(variable):
    def find(datasets):
        values = _per_run(
            datasets, lambda ds: gradients.gradient_excess(ds, variable=variable)["excess"]
        )
        return _ranked(
            values, f"early-layer excess of {variable}", "most uniform", "largest early excess"
        )

    return find


def _pruning(datasets):
    parts = []
    for name, ds in datasets.items():
        for removal in pruning.removals_at(ds, "layer"):
            cmp = pruning.compare_with_proxies(ds, "layer", removal=removal)
            inc = cmp["prune_loss_increase"].values
            cheapest = str(cmp["unit"].values[int(np.argmin(inc))])
            rho = cmp.attrs.get("spearman_block_influence", math.nan)
            parts.append(
                f"{name} ({removal}): cheapest {cheapest} (+{_fmt(float(np.min(inc)), 4)}), "
                f"ρ(1 − cos_in_out) {_fmt(rho)}"
            )
    if not parts:
        raise AnalysisError("no run has pruning results")
    return "; ".join(parts) + "."


def _loss(datasets):
    values = _per_run(datasets, lambda ds: snapshot(ds["loss"]))
    return _ranked(values, "training loss over the last 10 % of steps", "lowest", None, 4)


FINDINGS: dict[str, Callable[[Mapping[str, xr.Dataset]], str]] = {
    "dilution": _dilution,
    "layer-output": _layer_output,
    "growth-over-training": _growth_over_training,
    "relative-update": _relative_update,
    "depth-heatmap": _heatmap,
    "depth-heatmap-by-kind": _heatmap,
    "depth-entropy": _entropy,
    "mass-received": _mass,
    "grad-depth": _grad_depth,
    "layer-grad": _layer_grad("layer_grad_norm"),
    "layer-param-grad": _layer_grad("param_grad_norm"),
    "excess-over-training": _excess_over_training,
    "pruning": _pruning,
    "loss": _loss,
}


def finding(name: str, datasets: Mapping[str, xr.Dataset]) -> str:
    """One sentence of numbers about figure ``name`` over ``datasets`` (name -> run), or ''
    when the runs hold nothing to say it with."""
    find = FINDINGS.get(name)
    if find is None:
        return ""
    try:
        return find({n if n else run_name(ds): ds for n, ds in datasets.items()})
    except AnalysisError:
        return ""
