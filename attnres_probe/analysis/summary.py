"""The headline numbers of one run as a plain dict (JSON-ready: NaN becomes None).

Used by ``attnres-probe info``, the demo report and the dashboard's overview; every number is
computed by the analysis functions over the last ``fraction`` of recorded steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from attnres_probe.analysis import depth, dilution, gradients, pruning
from attnres_probe.analysis.select import (
    DEFAULT_FRACTION,
    AnalysisError,
    model_config,
    run_name,
    snapshot,
)


def _num(x) -> float | None:
    x = float(x)
    return None if not math.isfinite(x) else x


def _pruned_by_loss(
    ds: xr.Dataset, k: int, fraction: float, removal: str | None
) -> dict[str, Any] | None:
    """The ``k`` layers cheapest to remove by measured held-out loss increase with ``removal``
    (None: the run's default), with the proxies' Spearman ρ; None without stored results."""
    try:
        cmp = pruning.compare_with_proxies(ds, "layer", fraction, removal)
    except AnalysisError:
        return None
    order = np.argsort(cmp["prune_loss_increase"].values, kind="stable")[:k]
    return {
        "by": "held-out loss increase",
        "removal": cmp.attrs["removal"],
        "layers": [
            {
                "unit": str(cmp["unit"].values[i]),
                "loss_increase": _num(cmp["prune_loss_increase"].values[i]),
            }
            for i in order
        ],
        "base_loss": _num(cmp["prune_base_loss"]),
        "spearman": {
            name.removeprefix("spearman_"): _num(v)
            for name, v in cmp.attrs.items()
            if name.startswith("spearman_")
        },
    }


def _most_prunable(ds: xr.Dataset, k: int, fraction: float) -> dict[str, Any] | None:
    """The ``k`` layers cheapest to remove: by measured loss increase (the run's default
    removal) when pruning results exist, else by the Block Influence proxy (1 − cos_in_out)."""
    measured = _pruned_by_loss(ds, k, fraction, None)
    if measured is not None:
        return measured
    if "cos_in_out" not in ds.data_vars or ds.sizes.get("step", 0) == 0:
        return None
    influence = 1.0 - snapshot(ds["cos_in_out"], None, fraction)
    values = np.where(np.isfinite(influence.values), influence.values, np.inf)
    order = np.argsort(values, kind="stable")[:k]
    return {
        "by": "proxy 1 − cos_in_out (Block Influence)",
        "layers": [
            {"unit": f"L{int(influence['layer'].values[i])}", "block_influence": _num(values[i])}
            for i in order
        ],
    }


def _pruning_by_removal(ds: xr.Dataset, k: int, fraction: float) -> dict[str, Any]:
    """Per stored removal mode of the layer results: the cheapest layers and the proxies' ρ."""
    out = {}
    for removal in pruning.removals_at(ds, "layer"):
        found = _pruned_by_loss(ds, k, fraction, removal)
        if found is not None:
            out[removal] = found
    return out


def _paper_profiles(ds: xr.Dataset, fraction: float) -> dict[str, Any]:
    """The per-layer statistics the paper states its claims with (those the run recorded):
    output-magnitude growth, Block AttnRes's periodic pattern, the early-layer gradient
    excess, and the depth-attention mass beside each source's gradient."""
    out: dict[str, Any] = {}
    if "layer_output_rms" in ds.data_vars:
        g = dilution.growth(ds, None, fraction, variable="layer_output_rms")
        out["output_magnitude"] = {
            "exponent": _num(g["exponent"]),
            "last_first_ratio": _num(g["last_first_ratio"]),
        }
        if ds.attrs.get("residual") == "block":
            try:
                p = dilution.block_periodicity(ds, None, fraction)
            except AnalysisError:
                p = None
            if p is not None:
                out["block_periodicity"] = {
                    "within_block_rise": _num(p["within_block_rise"]),
                    "boundary_drop": _num(p["boundary_drop"]),
                    "across_block_exponent": _num(p["across_block_exponent"]),
                }
    excess = {}
    for variable in ("layer_grad_norm", "param_grad_norm"):
        if variable in ds.data_vars:
            e = gradients.gradient_excess(ds, None, fraction, variable)
            excess[variable] = _num(e["excess"])
            excess["early_layers"] = int(e.attrs["early"])
    if excess:
        out["early_gradient_excess"] = excess
    if "depth_weights" in ds.data_vars and "grad_norm" in ds.data_vars:
        out["mass_gradient_spearman"] = _num(
            depth.mass_and_gradient(ds, None, fraction).attrs["spearman"]
        )
    return out


def run_summary(
    ds: xr.Dataset,
    fraction: float = DEFAULT_FRACTION,
    extra: Mapping[str, Any] | None = None,
    top_k: int = 3,
) -> dict[str, Any]:
    """Headline numbers of a run: identity, steps, loss, stream growth (``dilution``), the
    per-layer statistics of the paper's claims (``output_magnitude``, ``block_periodicity``,
    ``early_gradient_excess``, ``mass_gradient_spearman``), gradient spread (a diagnostic),
    depth-attention spread and top sources (AttnRes), the most prunable layers (the run's
    default removal) and, per stored removal mode, the pruning results (``pruning``).

    extra: checkpoint facts to fold in (``held_out_loss`` is read from it when present).
    """
    cfg = model_config(ds)
    n_steps = int(ds.sizes.get("step", 0))
    out: dict[str, Any] = {
        "run": run_name(ds),
        "kind": ds.attrs.get("residual", cfg.get("residual")),
        "n_layers": int(ds.attrs.get("n_layers", cfg.get("n_layers", 0)) or 0),
        "n_sublayers": int(ds.sizes.get("sublayer", 0)),
        "d_model": cfg.get("d_model"),
        "n_blocks": cfg.get("n_blocks") if cfg.get("residual") == "block" else None,
        "status": ds.attrs.get("status"),
        "steps_recorded": n_steps,
        "first_step": int(ds["step"].values[0]) if n_steps else None,
        "last_step": int(ds["step"].values[-1]) if n_steps else None,
        "window": None,
    }
    held_out = (extra or {}).get("held_out_loss")
    out["held_out_loss"] = _num(held_out) if held_out is not None else None
    if n_steps == 0:
        return out
    if "loss" in ds.data_vars:
        loss = snapshot(ds["loss"], None, fraction)
        out["train_loss"] = _num(loss)
        out["window"] = loss.attrs.get("steps")
    if "nonfinite" in ds.data_vars:
        out["nonfinite"] = int(np.nansum(ds["nonfinite"].values))
    if "hidden_rms" in ds.data_vars:
        g = dilution.growth(ds, None, fraction)
        out["dilution"] = {
            "last_first_ratio": _num(g["last_first_ratio"]),
            "exponent": _num(g["exponent"]),
            "linear_slope": _num(g["linear_slope"]),
        }
    if "update_rms" in ds.data_vars and "hidden_rms" in ds.data_vars:
        rel = snapshot(dilution.relative_update(ds), None, fraction)
        out["relative_update"] = {
            "first": _num(rel.values[0]),
            "last": _num(rel.values[-1]),
            "mean": _num(np.nanmean(rel.values)),
        }
    out |= _paper_profiles(ds, fraction)
    if "grad_norm" in ds.data_vars:
        s = gradients.gradient_spread_summary(ds, None, fraction)
        out["gradient_spread"] = {"cv": _num(s["cv"]), "max_over_min": _num(s["max_over_min"])}
    if "depth_weights" in ds.data_vars:
        ent = depth.depth_entropy(ds, of="tokens" if "depth_entropy" in ds else "mean")
        norm = snapshot(ent["normalised_entropy"], None, fraction)
        eff = snapshot(ent["effective_sources"], None, fraction)
        out["depth"] = {
            "mean_normalised_entropy": _num(np.nanmean(norm.values)),
            "mean_effective_sources": _num(np.nanmean(eff.values)),
            "top_sources": [
                {"source": n, "share": _num(v)}
                for n, v in depth.overall_top_sources(ds, top_k, fraction)
            ],
        }
    out["most_prunable"] = _most_prunable(ds, top_k, fraction)
    out["pruning"] = _pruning_by_removal(ds, top_k, fraction)
    return out
