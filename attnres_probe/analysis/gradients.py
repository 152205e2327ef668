"""Gradients across depth: the per-sublayer gradient-norm profile and how uneven it is.

The spread of a profile over depth is given two ways: the coefficient of variation
(population std / mean; 0 = perfectly uniform) and the max/min ratio (1 = uniform). A
PreNorm baseline typically has large gradients at the first sublayers and small ones deep
down; AttnRes claims a more uniform profile.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from attnres_probe.analysis.select import DEFAULT_FRACTION, AnalysisError, require, snapshot

GRADIENT_VARIABLES = {"grad_norm": "sublayer", "param_grad_norm": "layer"}


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


def gradient_spread(ds: xr.Dataset, variable: str = "grad_norm") -> xr.Dataset:
    """Spread of the gradient profile over depth at every recorded step: ``cv``,
    ``max_over_min`` [step]."""
    da, dim = _gradients(ds, variable)
    return spread(da, dim)


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
