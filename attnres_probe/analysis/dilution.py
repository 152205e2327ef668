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

from attnres_probe.analysis.select import (
    DEFAULT_FRACTION,
    AnalysisError,
    model_config,
    require,
    run_name,
    snapshot,
    windows,
)

# Magnitude profiles the growth fit runs over, and the dim each lies along.
MAGNITUDE_VARIABLES = {"hidden_rms": "sublayer", "layer_output_rms": "layer"}


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


def row_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
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


def fit_growth(profile: xr.DataArray, dim: str = "sublayer") -> xr.Dataset:
    """Growth fit of ``profile`` [..., dim] against depth = index along ``dim`` + 1 (the
    number of terms a PreNorm stream has summed there): ``exponent`` (log-log slope),
    ``linear_slope`` and ``last_first_ratio``, each over the other dims.

    dim: ``sublayer`` for profiles per sublayer (``hidden_rms``), ``layer`` for profiles per
    transformer layer (``layer_output_rms``)."""
    if dim not in profile.dims:
        raise AnalysisError(f"{profile.name!r} has no {dim!r} dim to fit growth along")
    other = [d for d in profile.dims if d != dim]
    p = profile.transpose(*other, dim)
    y = np.asarray(p.values, dtype=float).reshape(-1, p.sizes[dim])
    depth = np.asarray(p[dim].values, dtype=float) + 1.0
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
                row_slopes(np.log(depth), log_y),
                f"growth exponent: slope of log RMS vs log {dim} depth",
                "1",
            ),
            "linear_slope": var(row_slopes(depth, y), "slope of RMS vs depth", f"RMS per {dim}"),
            "last_first_ratio": var(
                _edge_ratio(y), f"RMS at the last {dim} / at the first", "ratio"
            ),
        }
    )


def magnitude(ds: xr.Dataset, variable: str = "hidden_rms") -> xr.DataArray:
    """A recorded magnitude profile [step, sublayer] (``hidden_rms``) or [step, layer]
    (``layer_output_rms``, what each layer hands on: the paper's output magnitude)."""
    if variable not in MAGNITUDE_VARIABLES:
        raise AnalysisError(
            f"variable={variable!r} is not a magnitude profile; use one of "
            + ", ".join(MAGNITUDE_VARIABLES)
        )
    require(ds, variable)
    return ds[variable]


def growth_over_training(
    ds: xr.Dataset, variable: str = "hidden_rms", window: int | None = None
) -> xr.Dataset:
    """The growth fit of ``variable`` at every recorded step (or of the mean profile of each
    ``window`` of recorded steps): ``exponent``, ``linear_slope``, ``last_first_ratio``, each
    [step]."""
    return fit_growth(windows(magnitude(ds, variable), window), MAGNITUDE_VARIABLES[variable])


def growth(
    ds: xr.Dataset,
    step: int | None = None,
    fraction: float = DEFAULT_FRACTION,
    variable: str = "hidden_rms",
) -> xr.Dataset:
    """The growth fit of the ``variable`` profile at ``step`` or averaged over the last
    ``fraction`` of steps: scalar ``exponent``, ``linear_slope``, ``last_first_ratio``, and the
    fitted ``profile`` [sublayer] or [layer]."""
    profile = snapshot(magnitude(ds, variable), step, fraction)
    out = fit_growth(profile, MAGNITUDE_VARIABLES[variable])
    out["profile"] = profile
    out.attrs["steps"] = profile.attrs.get("steps", "")
    return out


# ----------------------------------------------------------------------------- Block AttnRes


def block_of_layer(ds: xr.Dataset) -> np.ndarray:
    """The block each transformer layer of a Block AttnRes run hands its output to [layer]:
    the block holding the layer's last sublayer (blocks of 2·n_layers / n_blocks sublayers)."""
    cfg = model_config(ds)
    residual = ds.attrs.get("residual", cfg.get("residual"))
    if residual != "block" or not cfg.get("n_blocks"):
        raise AnalysisError(
            f"run {run_name(ds)!r} is {residual!r}, not Block AttnRes; the periodic pattern "
            "follows block boundaries, pick a block run"
        )
    n_layers = int(ds.sizes.get("layer", cfg.get("n_layers", 0)))
    per_block = 2 * n_layers // int(cfg["n_blocks"])
    return (2 * np.arange(n_layers) + 1) // per_block


def _geometric_mean(ratios: np.ndarray) -> np.ndarray:
    """exp(mean log) over the last axis of positive finite ratios (NaN where there are none)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where((ratios > 0) & np.isfinite(ratios), np.log(ratios), np.nan)
        count = np.isfinite(logs).sum(-1)
        total = np.nansum(logs, axis=-1)
        return np.where(count > 0, np.exp(total / np.maximum(count, 1)), np.nan)


def periodicity(profile: xr.DataArray, block_of: np.ndarray) -> xr.Dataset:
    """The periodic pattern of a per-layer profile [..., layer] whose layers belong to blocks
    ``block_of`` [layer] (non-decreasing), each statistic over the other dims:

    - ``within_block_rise``: geometric mean over blocks of ≥ 2 layers of (value at the block's
      last layer / value at its first layer); > 1 when the profile rises inside each block,
      as a Block AttnRes partial sum does while it accumulates.
    - ``boundary_drop``: geometric mean over block boundaries of (value at the first layer of
      block b+1 / value at the last layer of block b); < 1 when it restarts at each boundary.
    - ``across_block_exponent``: log-log slope of each block's last-layer value (the
      completed block's magnitude) against the block's position 1, 2, …: the trend across
      blocks, ≈ 0 for a bounded profile.
    - ``block_end`` [..., block]: those last-layer values.

    A profile is periodic with the blocks when ``within_block_rise`` > 1 and
    ``boundary_drop`` < 1.
    """
    other = [d for d in profile.dims if d != "layer"]
    p = profile.transpose(*other, "layer")
    y = np.asarray(p.values, dtype=float).reshape(-1, p.sizes["layer"])
    blocks = np.unique(block_of)
    first = np.array([np.flatnonzero(block_of == b)[0] for b in blocks])
    last = np.array([np.flatnonzero(block_of == b)[-1] for b in blocks])
    with np.errstate(divide="ignore", invalid="ignore"):
        rises = y[:, last[last > first]] / y[:, first[last > first]]
        drops = y[:, first[1:]] / y[:, last[:-1]]
    ends = y[:, last]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ends = np.where(ends > 0, np.log(ends), np.nan)
    shape = [p.sizes[d] for d in other]
    coords = {d: p[d] for d in other}

    def var(values, long_name, units, extra=()):
        dims = (*other, *extra)
        return xr.DataArray(
            np.asarray(values).reshape(shape + [len(blocks)] * len(extra)),
            dims=dims,
            coords=coords,
            attrs={"long_name": long_name, "units": units},
        )

    return xr.Dataset(
        {
            "within_block_rise": var(
                _geometric_mean(rises), "last / first layer of a block (geometric mean)", "ratio"
            ),
            "boundary_drop": var(
                _geometric_mean(drops),
                "first layer of a block / last layer of the block before (geometric mean)",
                "ratio",
            ),
            "across_block_exponent": var(
                row_slopes(np.log(np.arange(1, len(blocks) + 1.0)), log_ends),
                "slope of log block-end value vs log block position",
                "1",
            ),
            "block_end": var(
                ends, "value at the block's last layer", profile.attrs.get("units", ""), ("block",)
            ),
        },
        coords={"block": blocks + 1},
    )


def block_periodicity(
    ds: xr.Dataset,
    step: int | None = None,
    fraction: float = DEFAULT_FRACTION,
    variable: str = "layer_output_rms",
) -> xr.Dataset:
    """:func:`periodicity` of a Block AttnRes run's per-layer ``variable`` profile at ``step``
    or averaged over the last ``fraction`` of steps, with the ``profile`` [layer]."""
    block_of = block_of_layer(ds)
    require(ds, variable)
    profile = snapshot(ds[variable], step, fraction)
    out = periodicity(profile, block_of)
    out["profile"] = profile
    out.attrs["steps"] = profile.attrs.get("steps", "")
    return out


def periodicity_over_training(
    ds: xr.Dataset, variable: str = "layer_output_rms", window: int | None = None
) -> xr.Dataset:
    """:func:`periodicity` at every recorded step (or per ``window`` of recorded steps)."""
    block_of = block_of_layer(ds)
    require(ds, variable)
    return periodicity(windows(ds[variable], window), block_of)
