"""Depth attention of AttnRes runs: which earlier sources each sublayer reads, and how spread.

``depth_weights`` [step, sublayer, source] is NaN where a source does not exist for a sublayer
(full: sublayer l sees the embedding and sublayers < l; block: completed blocks and, after a
block's first sublayer, its partial sum). Entropy is normalised by ``log(n available sources)``
so 1 means uniform over what the sublayer can see; ``exp(entropy)`` is the effective number of
sources. The model output is one more AttnRes op, recorded as ``depth_weights_out`` [step,
source]; with ``include_output`` it becomes an extra row with sublayer index ``n_sublayers``
and kind ``"out"``.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from attnres_probe.analysis.select import DEFAULT_FRACTION, AnalysisError, require, snapshot


def _with_output(ds: xr.Dataset, name: str, out_name: str) -> xr.DataArray:
    """``ds[name]`` with the model-output op appended as sublayer ``n_sublayers`` when recorded."""
    da = ds[name]
    if out_name not in ds.data_vars:
        return da
    n_sub = ds.sizes["sublayer"]
    extra = ds[out_name].expand_dims(sublayer=[n_sub])
    extra = extra.assign_coords(
        {
            c: ("sublayer", [v])
            for c, v in (("kind", "out"), ("layer_of", int(ds.attrs.get("n_layers", n_sub // 2))))
            if c in da.coords
        }
    )
    return xr.concat([da, extra.transpose(*da.dims)], dim="sublayer")


def depth_weights(ds: xr.Dataset, include_output: bool = False) -> xr.DataArray:
    """The recorded mean depth weights [step, sublayer, source] (NaN: source not available)."""
    require(ds, "depth_weights")
    if include_output:
        return _with_output(ds, "depth_weights", "depth_weights_out")
    return ds["depth_weights"]


def n_available_sources(ds: xr.Dataset, include_output: bool = False) -> xr.DataArray:
    """How many sources each sublayer can attend over [sublayer] (non-NaN at any step)."""
    w = depth_weights(ds, include_output)
    n = w.notnull().any("step").sum("source")
    n.name = "n_sources"
    return n


def mean_depth_weights(
    ds: xr.Dataset,
    step: int | None = None,
    fraction: float = DEFAULT_FRACTION,
    include_output: bool = False,
) -> xr.DataArray:
    """Depth weights [sublayer, source] at ``step`` or averaged over the last ``fraction``."""
    return snapshot(depth_weights(ds, include_output), step, fraction)


def depth_weights_of(ds: xr.Dataset, sublayer: int) -> xr.DataArray:
    """How one sublayer's depth weights evolve over training [step, source] (available only)."""
    w = depth_weights(ds, include_output=True)
    if sublayer not in w["sublayer"].values:
        raise AnalysisError(
            f"sublayer={sublayer} is not in this run; pick one of 0…{w.sizes['sublayer'] - 1}"
        )
    one = w.sel(sublayer=sublayer)
    return one.isel(source=np.flatnonzero(one.notnull().any("step").values))


def _entropy_of(weights: xr.DataArray) -> xr.DataArray:
    """Shannon entropy (nats) over ``source`` of weights that sum to 1 (NaN entries absent)."""
    p = weights.fillna(0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = xr.where(p > 0, -p * np.log(p), 0.0)
    h = terms.sum("source")
    return h.where(weights.notnull().any("source"))


def depth_entropy(ds: xr.Dataset, of: str = "tokens", include_output: bool = False) -> xr.Dataset:
    """Spread of each sublayer's depth attention over training, [step, sublayer] variables:

    ``entropy`` (nats), ``normalised_entropy`` = entropy / log(n available sources) (NaN where
    only one source exists), ``effective_sources`` = exp(entropy), and ``n_sources``.

    of: ``"tokens"`` uses the recorded ``depth_entropy`` (mean over tokens of each token's
    entropy: how focused a single token's read is); ``"mean"`` is the entropy of the mean
    weights (how focused the sublayer is on average; ≥ the token mean by concavity).
    """
    if of == "tokens":
        require(ds, "depth_entropy")
        h = ds["depth_entropy"]
        if include_output:
            h = _with_output(ds, "depth_entropy", "depth_entropy_out")
    elif of == "mean":
        h = _entropy_of(depth_weights(ds, include_output))
    else:
        raise AnalysisError(f"of={of!r} is not an entropy kind; use 'tokens' or 'mean'")
    n = n_available_sources(ds, include_output)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_n = np.log(n.astype(float)).where(n > 1)
    return xr.Dataset(
        {
            "entropy": h.assign_attrs(long_name="depth-attention entropy", units="nats"),
            "normalised_entropy": (h / log_n).assign_attrs(
                long_name="entropy / log(available sources)", units="1"
            ),
            "effective_sources": np.exp(h).assign_attrs(
                long_name="effective number of sources exp(H)", units="sources"
            ),
            "n_sources": n,
        }
    )


def top_sources(
    ds: xr.Dataset,
    k: int = 3,
    step: int | None = None,
    fraction: float = DEFAULT_FRACTION,
    include_output: bool = False,
) -> xr.Dataset:
    """Each sublayer's ``k`` most-weighted sources, [sublayer, rank]: ``source_name`` (str, ''
    past the available ones) and ``weight`` (NaN past them); rank 0 is the largest."""
    w = mean_depth_weights(ds, step, fraction, include_output)
    values = np.asarray(w.transpose("sublayer", "source").values, dtype=float)
    names = np.asarray(w["source"].values).astype(str)
    k = max(1, min(k, values.shape[1]))
    order = np.argsort(np.where(np.isfinite(values), -values, np.inf), axis=1, kind="stable")[:, :k]
    top_w = np.take_along_axis(values, order, axis=1)
    top_n = np.where(np.isfinite(top_w), names[order], "")
    coords = {"sublayer": w["sublayer"], "rank": np.arange(k)}
    out = xr.Dataset(
        {
            "source_name": (("sublayer", "rank"), top_n.astype(object)),
            "weight": (("sublayer", "rank"), top_w),
        },
        coords=coords,
    )
    out.attrs["steps"] = w.attrs.get("steps", "")
    return out


def overall_top_sources(
    ds: xr.Dataset, k: int = 3, fraction: float = DEFAULT_FRACTION
) -> list[tuple[str, float]]:
    """The ``k`` sources supplying the largest share of all sublayer inputs over the last
    ``fraction`` of steps, as (name, share): the weight averaged over every sublayer, counting
    0 where a source is not available (so shares sum to 1) — a one-line headline."""
    w = mean_depth_weights(ds, None, fraction).fillna(0.0).mean("sublayer")
    pairs = [(str(n), float(v)) for n, v in zip(w["source"].values, w.values, strict=True)]
    return sorted(pairs, key=lambda p: -p[1])[:k]
