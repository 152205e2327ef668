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

from attnres_probe.analysis.select import (
    DEFAULT_FRACTION,
    AnalysisError,
    require,
    snapshot,
    windows,
)
from attnres_probe.analysis.stats import spearman


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


# ----------------------------------------------------------------------------- mass received


def mass_received(
    ds: xr.Dataset, step: int | None = None, fraction: float | None = DEFAULT_FRACTION
) -> xr.DataArray:
    """Depth-attention mass each source receives [source]: the sum over its consumers (every
    sublayer's op and the model output's) of their mean weight on it, at ``step`` or averaged
    over the last ``fraction`` of steps; ``fraction=None`` keeps every step [step, source].

    A uniform reader spreads 1 over what it sees, so a Full AttnRes source v_i read uniformly
    receives Σ_{l ≥ i} 1/(l + 1); a source no consumer reads receives 0. Block AttnRes's
    ``partial`` column sums the weight on every (different) partial sum."""
    w = depth_weights(ds, include_output=True)
    if fraction is not None:  # the window first: a long run's other steps are never read
        w = snapshot(w, step, fraction)
    present = w.notnull().any([d for d in w.dims if d != "source"])
    mass = w.fillna(0.0).sum("sublayer").where(present)
    return mass.assign_attrs(
        long_name="depth-attention mass received", units="weight", steps=w.attrs.get("steps", "")
    )


def source_sublayer(ds: xr.Dataset) -> xr.DataArray:
    """The sublayer whose update gradient is each source's gradient [source] (−1: none).

    Full AttnRes: source ``Lk.attn`` / ``Lk.mlp`` *is* that sublayer's update, so its gradient
    is that sublayer's ``grad_norm``. Block AttnRes: ``blockk`` is the sum of the block's
    updates and its last update enters nothing else, so ∂loss/∂block = ∂loss/∂(that last
    update). The embedding and the partial sums have no recorded gradient."""
    names = [str(s) for s in ds["source"].values]
    kinds = [str(k) for k in ds["kind"].values]
    layers = [int(x) for x in ds["layer_of"].values]
    site = {
        f"L{layer}.{kind}": i for i, (kind, layer) in enumerate(zip(kinds, layers, strict=True))
    }
    n_blocks = sum(1 for n in names if n.startswith("block") and n[5:].isdigit())
    per_block = ds.sizes["sublayer"] // n_blocks if n_blocks else 0
    out = []
    for name in names:
        if name in site:
            out.append(site[name])
        elif per_block and name.startswith("block") and name[5:].isdigit():
            out.append(int(name[5:]) * per_block - 1)
        else:
            out.append(-1)
    return xr.DataArray(
        np.asarray(out, dtype=np.int64), dims="source", coords={"source": ds["source"]}
    )


def mass_and_gradient(
    ds: xr.Dataset, step: int | None = None, fraction: float = DEFAULT_FRACTION
) -> xr.Dataset:
    """Each source's depth-attention mass received beside its gradient norm [source]:
    ``mass_received`` and ``grad_norm`` (NaN where the source has no recorded gradient, see
    :func:`source_sublayer`), at ``step`` or over the last ``fraction`` of steps. attrs
    ``spearman``: Spearman ρ of the two over the sources with both; ``steps``.

    In AttnRes no identity path reaches a source: its gradient flows only through the weight
    later readers give it, so a high ρ says the mass received explains which sources get the
    largest and the smallest gradients (and so a gradient max/min)."""
    require(ds, "grad_norm")
    mass = mass_received(ds, step, fraction)
    grads = snapshot(ds["grad_norm"], step, fraction)
    index = source_sublayer(ds).values
    values = np.asarray(grads.values, dtype=float)
    grad = np.where(index >= 0, values[np.clip(index, 0, None)], np.nan)
    out = xr.Dataset(
        {
            "mass_received": mass,
            "grad_norm": (
                "source",
                grad,
                {"long_name": "gradient norm of the source", "units": "gradient"},
            ),
        }
    )
    out.attrs = {
        "spearman": spearman(mass.values, grad),
        "steps": mass.attrs.get("steps", ""),
    }
    return out


def mass_gradient_over_training(ds: xr.Dataset, window: int | None = None) -> xr.DataArray:
    """Spearman ρ of mass received vs source gradient (see :func:`mass_and_gradient`) at
    every recorded step, or of the means over each ``window`` of recorded steps [step]."""
    require(ds, "grad_norm")
    mass = windows(mass_received(ds, fraction=None), window)
    grads = windows(ds["grad_norm"], window)
    index = source_sublayer(ds).values
    has = index >= 0
    rho = [
        spearman(m[has], g[index[has]])
        for m, g in zip(
            np.asarray(mass.transpose("step", "source").values, dtype=float),
            np.asarray(grads.transpose("step", "sublayer").values, dtype=float),
            strict=True,
        )
    ]
    return xr.DataArray(
        np.asarray(rho),
        dims="step",
        coords={"step": mass["step"]},
        attrs={"long_name": "Spearman ρ, mass received vs source gradient", "units": "1"},
    )


# ----------------------------------------------------------------------------- layouts


def weights_by_kind(weights: xr.DataArray) -> xr.Dataset:
    """Depth weights [sublayer, source] (no output row) in the paper's layout: ``pre_attn``
    and ``pre_mlp`` [layer, source], the weights of the op before each layer's attention and
    before its MLP (rows: the consumer layer, columns: the source)."""
    w = weights.isel(sublayer=np.flatnonzero(weights["kind"].values != "out"))
    panels = {}
    for name, kind in (("pre_attn", "attn"), ("pre_mlp", "mlp")):
        rows = w.isel(sublayer=np.flatnonzero(w["kind"].values == kind))
        layers = rows["layer_of"].values.astype(np.int64)
        rows = rows.drop_vars([c for c in ("kind", "layer_of") if c in rows.coords])
        panels[name] = rows.rename(sublayer="layer").assign_coords(layer=layers)
    out = xr.Dataset(panels)
    out.attrs = dict(weights.attrs)
    return out
