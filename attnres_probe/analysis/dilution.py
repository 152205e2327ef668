"""PreNorm dilution: the stream grows with depth and each sublayer's update shrinks relative to it.

In a PreNorm residual stream the input of sublayer ``l`` is the unweighted sum of ``l + 1``
terms (the embedding and ``l`` updates), so its RMS grows roughly like a power of ``l + 1``:
exponent ≈ 0.5 for uncorrelated updates, ≈ 1 for aligned ones. AttnRes replaces the sum by a
convex combination, which keeps the RMS flat (exponent ≈ 0). ``depth = sublayer + 1`` is the
number of terms, the natural x for the fit.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from attnres_probe.analysis.select import DEFAULT_FRACTION, require, snapshot


def stream_rms(ds: xr.Dataset) -> xr.DataArray:
    """RMS of the stream entering each sublayer, [step, sublayer] (the recorded ``hidden_rms``)."""
    require(ds, "hidden_rms")
    return ds["hidden_rms"]


def relative_update(ds: xr.Dataset) -> xr.DataArray:
    """Each sublayer's update relative to its input [step, sublayer]: update_rms / hidden_rms."""
    require(ds, "hidden_rms", "update_rms")
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = ds["update_rms"] / ds["hidden_rms"]
    rel.name = "relative_update"
    rel.attrs = {"long_name": "update RMS / stream RMS", "units": "ratio"}
    return rel


def _row_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of each row of ``y`` [R, N] against ``x`` [N], ignoring NaN entries."""
    ok = np.isfinite(y)
    w = ok.astype(float)
    n = w.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        x_mean = (w * x).sum(-1) / n
        y_mean = np.where(ok, y, 0.0).sum(-1) / n
        dx = (x[None, :] - x_mean[:, None]) * w
        dy = np.where(ok, y - y_mean[:, None], 0.0)
        slope = (dx * dy).sum(-1) / (dx * dx).sum(-1)
    return np.where(n >= 2, slope, np.nan)


def _edge_ratio(y: np.ndarray) -> np.ndarray:
    """Last finite value over first finite value of each row of ``y`` [R, N]."""
    ok = np.isfinite(y)
    out = np.full(y.shape[0], np.nan)
    for r in range(y.shape[0]):
        idx = np.flatnonzero(ok[r])
        if idx.size >= 1 and y[r, idx[0]] != 0:
            out[r] = y[r, idx[-1]] / y[r, idx[0]]
    return out


def fit_growth(profile: xr.DataArray) -> xr.Dataset:
    """Growth fit of ``profile`` [..., sublayer] against depth = sublayer + 1: ``exponent``
    (log-log slope), ``linear_slope`` and ``last_first_ratio``, each over the other dims."""
    other = [d for d in profile.dims if d != "sublayer"]
    p = profile.transpose(*other, "sublayer")
    y = np.asarray(p.values, dtype=float).reshape(-1, p.sizes["sublayer"])
    depth = np.asarray(p["sublayer"].values, dtype=float) + 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        log_y = np.where(y > 0, np.log(y), np.nan)
    shape = [p.sizes[d] for d in other]
    coords = {d: p[d] for d in other}

    def var(values: np.ndarray, long_name: str, units: str) -> xr.DataArray:
        return xr.DataArray(
            values.reshape(shape),
            dims=other,
            coords=coords,
            attrs={"long_name": long_name, "units": units},
        )

    return xr.Dataset(
        {
            "exponent": var(
                _row_slopes(np.log(depth), log_y),
                "growth exponent: slope of log RMS vs log depth",
                "1",
            ),
            "linear_slope": var(_row_slopes(depth, y), "slope of RMS vs depth", "RMS per sublayer"),
            "last_first_ratio": var(
                _edge_ratio(y), "RMS entering the last sublayer / entering the first", "ratio"
            ),
        }
    )


def growth_over_training(ds: xr.Dataset) -> xr.Dataset:
    """The stream-RMS growth fit at every recorded step: ``exponent``, ``linear_slope``,
    ``last_first_ratio``, each [step]."""
    return fit_growth(stream_rms(ds))


def growth(
    ds: xr.Dataset, step: int | None = None, fraction: float = DEFAULT_FRACTION
) -> xr.Dataset:
    """The growth fit of the stream-RMS profile at ``step`` or averaged over the last
    ``fraction`` of steps: scalar ``exponent``, ``linear_slope``, ``last_first_ratio``, and the
    fitted ``profile`` [sublayer]."""
    profile = snapshot(stream_rms(ds), step, fraction)
    out = fit_growth(profile)
    out["profile"] = profile
    out.attrs["steps"] = profile.attrs.get("steps", "")
    return out
