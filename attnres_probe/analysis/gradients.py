"""Gradients across depth: the gradient-norm profiles, the early-layer excess, and the spread.

The paper's statement (its Fig. 5c, per transformer layer): a PreNorm baseline has
disproportionately large gradients in its earliest layers, Block AttnRes a more uniform
distribution. Measured as it is stated, by the **early-layer excess**: the mean gradient norm
over the first ~10 % of layers (ceil, at least one) divided by the median over all layers, of
``layer_grad_norm`` (‖∂loss/∂ what the layer hands on‖) or ``param_grad_norm`` (the layer's own
weights). 1 means the first layers get no more than a typical layer.

The **spread** of a profile — the coefficient of variation (population std / mean) and max/min
— is a different statistic, kept as a diagnostic: in AttnRes a source is reached only through
the depth-attention mass later sublayers give it, so its minimum is set by the least-read late
sources (see ``depth.mass_and_gradient``).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from attnres_probe.analysis.select import (
    DEFAULT_FRACTION,
    AnalysisError,
    first_count,
    require,
    snapshot,
    windows,
)

# Gradient-norm profiles and the dim each lies along.
GRADIENT_VARIABLES = {
    "grad_norm": "sublayer",
    "layer_grad_norm": "layer",
    "param_grad_norm": "layer",
}
EARLY_FRACTION = 0.1  # the early layers: the first 10 % (at least one)


def gradient_norms(ds: xr.Dataset, variable: str = "grad_norm") -> xr.DataArray:
    """The recorded gradient norms [step, sublayer] (``grad_norm``) or [step, layer]
    (``param_grad_norm``)."""
    return _gradients(ds, variable)[0]


def _gradients(ds: xr.Dataset, variable: str) -> tuple[xr.DataArray, str]:
    if variable not in GRADIENT_VARIABLES:
        raise AnalysisError(
            f"variable={variable!r} is not a gradient variable; use one of "
            + ", ".join(GRADIENT_VARIABLES)
        )
    require(ds, variable)
    return ds[variable], GRADIENT_VARIABLES[variable]


def spread(profile: xr.DataArray, dim: str) -> xr.Dataset:
    """Spread of ``profile`` over ``dim`` (NaN ignored): ``cv`` = std/mean, ``max_over_min``."""
    mean = profile.mean(dim, skipna=True)
    std = profile.std(dim, skipna=True, ddof=0)
    lo = profile.min(dim, skipna=True)
    hi = profile.max(dim, skipna=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        cv = (std / mean).where(mean > 0)
        ratio = (hi / lo).where(lo > 0)
    return xr.Dataset(
        {
            "cv": cv.assign_attrs(long_name=f"coefficient of variation over {dim}", units="1"),
            "max_over_min": ratio.assign_attrs(long_name=f"max / min over {dim}", units="ratio"),
        }
    )


def gradient_profile(
    ds: xr.Dataset,
    step: int | None = None,
    fraction: float = DEFAULT_FRACTION,
    variable: str = "grad_norm",
) -> xr.DataArray:
    """Gradient norm per sublayer (``grad_norm``) or per layer (``param_grad_norm``) at
    ``step`` or averaged over the last ``fraction`` of steps."""
    da, _ = _gradients(ds, variable)
    return snapshot(da, step, fraction)


def gradient_spread(
    ds: xr.Dataset, variable: str = "grad_norm", window: int | None = None
) -> xr.Dataset:
    """Spread of the gradient profile over depth at every recorded step (or of the mean
    profile of each ``window`` of recorded steps): ``cv``, ``max_over_min`` [step]."""
    da, dim = _gradients(ds, variable)
    return spread(windows(da, window), dim)


def gradient_spread_summary(
    ds: xr.Dataset,
    step: int | None = None,
    fraction: float = DEFAULT_FRACTION,
    variable: str = "grad_norm",
) -> xr.Dataset:
    """Scalar spread of the profile at ``step`` or of the last-``fraction`` mean profile."""
    profile = gradient_profile(ds, step, fraction, variable)
    out = spread(profile, GRADIENT_VARIABLES[variable])
    out.attrs["steps"] = profile.attrs.get("steps", "")
    return out


def early_excess(
    profile: xr.DataArray, dim: str = "layer", early_fraction: float = EARLY_FRACTION
) -> xr.DataArray:
    """Mean of ``profile`` over its first ``early_fraction`` of positions along ``dim`` (ceil,
    at least one) over its median along ``dim`` (NaN ignored), over the other dims."""
    k = first_count(profile.sizes[dim], early_fraction)
    early = profile.isel({dim: slice(0, k)}).mean(dim, skipna=True)
    median = profile.median(dim, skipna=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (early / median).where(median > 0)
    return out.assign_attrs(
        long_name=f"mean of the first {k} {dim}s / median over {dim}s",
        units="ratio",
        early=k,
    )


def gradient_excess(
    ds: xr.Dataset,
    step: int | None = None,
    fraction: float = DEFAULT_FRACTION,
    variable: str = "layer_grad_norm",
    early_fraction: float = EARLY_FRACTION,
) -> xr.Dataset:
    """The early-layer excess of ``variable``'s profile at ``step`` or averaged over the last
    ``fraction`` of steps: scalar ``excess``, the ``profile`` it is taken from; attrs ``early``
    (how many first positions count as early) and ``steps``."""
    profile = gradient_profile(ds, step, fraction, variable)
    excess = early_excess(profile, GRADIENT_VARIABLES[variable], early_fraction)
    out = xr.Dataset({"excess": excess, "profile": profile})
    out.attrs = {"early": excess.attrs["early"], "steps": profile.attrs.get("steps", "")}
    return out


def excess_over_training(
    ds: xr.Dataset,
    variable: str = "layer_grad_norm",
    window: int | None = None,
    early_fraction: float = EARLY_FRACTION,
) -> xr.DataArray:
    """The early-layer excess of ``variable`` at every recorded step, or of the mean profile of
    each ``window`` of recorded steps [step]."""
    da, dim = _gradients(ds, variable)
    return early_excess(windows(da, window), dim, early_fraction)
