"""Layer-pruning sensitivity: remove each unit of a trained model and measure the loss it costs.

A *unit* is a layer (its two sublayers), one sublayer, or (Block AttnRes) one block of
sublayers; removing it means zero-ablating its updates (``model(idx, skip=...)``) on the same
held-out batches of the run's corpus. The true cost is compared with the cheap proxies the
probe recorded during training:

- ``block_influence`` = 1 − ``cos_in_out`` of a layer. ShortGPT's Block Influence is the same
  quantity when the cosine is taken per token and averaged over tokens, as the probe records
  it; defined for layer units only.
- ``relative_update``: the unit's summed ``update_rms / hidden_rms``.

Results live in the run store as static variables on a ``unit`` dim (see ``STORED``), one row
per unit, every granularity side by side (coordinate ``granularity``).

Only :func:`prune_run` needs torch; everything else reads xarray.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import xarray as xr

from attnres_probe.analysis.dilution import relative_update
from attnres_probe.analysis.select import DEFAULT_FRACTION, AnalysisError, require, snapshot

GRANULARITIES = ("layer", "sublayer", "block")
# Stored variable name -> what it holds; all on dim `unit` except the 0-d base loss.
STORED = {
    "prune_unit_name": "unit label: L3, L3.attn, block2",
    "prune_granularity": "layer, sublayer or block",
    "prune_sublayer_start": "first sublayer the unit removes",
    "prune_sublayer_stop": "one past the last sublayer it removes",
    "prune_loss": "held-out loss with the unit removed",
    "prune_loss_increase": "prune_loss - base loss",
    "prune_base_loss": "held-out loss of the intact model in the same evaluation",
    "prune_batches": "held-out batches each loss averages",
}
ProgressCallback = Callable[[int, int, str], None]  # (done, total, unit just evaluated)


# ----------------------------------------------------------------------------- units


def units(residual: str, n_layers: int, n_blocks: int, granularity: str) -> list[tuple]:
    """The units of a model at ``granularity`` as (name, sublayer_start, sublayer_stop)."""
    if granularity == "layer":
        return [(f"L{i}", 2 * i, 2 * i + 2) for i in range(n_layers)]
    if granularity == "sublayer":
        kinds = ("attn", "mlp")
        return [(f"L{s // 2}.{kinds[s % 2]}", s, s + 1) for s in range(2 * n_layers)]
    if granularity == "block":
        if residual != "block":
            raise AnalysisError(
                f"granularity='block' needs a Block AttnRes run; this run is {residual!r}; "
                "use 'layer' or 'sublayer'"
            )
        per = 2 * n_layers // n_blocks
        return [(f"block{b + 1}", b * per, (b + 1) * per) for b in range(n_blocks)]
    raise AnalysisError(f"granularity={granularity!r} is not one of {', '.join(GRANULARITIES)}")


def results_dataset(
    unit_rows: list[tuple], granularity: str, losses: list[float], base_loss: float, attrs: dict
) -> xr.Dataset:
    """Pruning results for one granularity as a Dataset on dim ``unit``."""
    names = [u[0] for u in unit_rows]
    loss = np.asarray(losses, dtype=float)
    ds = xr.Dataset(
        {
            "prune_loss": ("unit", loss),
            "prune_loss_increase": ("unit", loss - base_loss),
            "prune_base_loss": ((), float(base_loss)),
            "prune_batches": ("unit", np.full(len(names), int(attrs.get("batches", 0)))),
        },
        coords={
            "unit": np.asarray(names, dtype=object),
            "granularity": ("unit", np.asarray([granularity] * len(names), dtype=object)),
            "sublayer_start": ("unit", np.asarray([u[1] for u in unit_rows], dtype=np.int64)),
            "sublayer_stop": ("unit", np.asarray([u[2] for u in unit_rows], dtype=np.int64)),
        },
        attrs=attrs,
    )
    return ds


def pruning_results(ds: xr.Dataset, granularity: str | None = "layer") -> xr.Dataset:
    """The stored pruning results of a run on dim ``unit`` (one granularity, or all for None):
    ``prune_loss``, ``prune_loss_increase``, ``prune_batches`` and ``prune_base_loss`` (0-d for
    one granularity, [unit] for all); coords ``granularity``, ``sublayer_start``,
    ``sublayer_stop``."""
    if "prune_loss" not in ds.data_vars:
        raise AnalysisError(
            f"run {ds.attrs.get('run_name', 'run')!r} has no pruning results; "
            "run `attnres-probe prune RUN` first"
        )
    out = xr.Dataset(
        {
            name: ds[name]
            for name in ("prune_loss", "prune_loss_increase", "prune_base_loss", "prune_batches")
            if name in ds.data_vars
        }
    )
    out = out.assign_coords(
        unit=np.asarray(ds["prune_unit_name"].values).astype(str).astype(object),
        granularity=("unit", np.asarray(ds["prune_granularity"].values).astype(str)),
        sublayer_start=("unit", np.asarray(ds["prune_sublayer_start"].values, dtype=np.int64)),
        sublayer_stop=("unit", np.asarray(ds["prune_sublayer_stop"].values, dtype=np.int64)),
    )
    out.attrs = dict(ds["prune_loss"].attrs)
    if granularity is None:
        return out
    chosen = out.isel(unit=np.flatnonzero(out["granularity"].values == granularity))
    if chosen.sizes["unit"] == 0:
        have = sorted(set(out["granularity"].values.tolist()))
        raise AnalysisError(
            f"no pruning results at granularity={granularity!r} (the run has {have}); "
            f"run `attnres-probe prune RUN --granularity {granularity}`"
        )
    # One granularity comes from one evaluation: one intact-model loss.
    if "unit" in chosen["prune_base_loss"].dims:
        chosen["prune_base_loss"] = chosen["prune_base_loss"].isel(unit=0, drop=True)
    return chosen


def _per_unit(results: xr.Dataset) -> xr.Dataset:
    """``results`` with its intact-model loss repeated on every unit (as stored)."""
    base = results["prune_base_loss"]
    if "unit" not in base.dims:
        results = results.assign(prune_base_loss=base.broadcast_like(results["prune_loss"]))
    return results


def merge_results(old: xr.Dataset | None, new: xr.Dataset) -> xr.Dataset:
    """Stored results with ``new``'s granularity replaced by ``new`` (others kept), on dim
    ``unit`` with ``prune_base_loss`` per unit."""
    new = _per_unit(new)
    if old is None:
        return new
    old = _per_unit(old)
    g = str(new["granularity"].values[0])
    kept = old.isel(unit=np.flatnonzero(old["granularity"].values != g))
    merged = xr.concat(
        [kept, new], dim="unit", data_vars="all", coords="minimal", compat="override"
    )
    merged.attrs = new.attrs
    return merged


def stored_arrays(results: xr.Dataset) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """The static variables (``STORED``) that put ``results`` into a run store."""
    results = _per_unit(results)
    return {
        "prune_unit_name": (("unit",), np.asarray(results["unit"].values, dtype=object)),
        "prune_granularity": (("unit",), np.asarray(results["granularity"].values, dtype=object)),
        "prune_sublayer_start": (("unit",), results["sublayer_start"].values.astype(np.int64)),
        "prune_sublayer_stop": (("unit",), results["sublayer_stop"].values.astype(np.int64)),
        "prune_loss": (("unit",), results["prune_loss"].values.astype(np.float32)),
        "prune_loss_increase": (
            ("unit",),
            results["prune_loss_increase"].values.astype(np.float32),
        ),
        "prune_base_loss": (("unit",), results["prune_base_loss"].values.astype(np.float32)),
        "prune_batches": (("unit",), results["prune_batches"].values.astype(np.int64)),
    }


# ----------------------------------------------------------------------------- proxies


def proxies(ds: xr.Dataset, results: xr.Dataset, fraction: float = DEFAULT_FRACTION) -> xr.Dataset:
    """The cheap proxies for each unit of ``results`` [unit], from the last ``fraction`` of the
    recording: ``block_influence`` (1 − cos_in_out; layer units only, NaN otherwise) and
    ``relative_update`` (summed over the unit's sublayers)."""
    start = results["sublayer_start"].values
    stop = results["sublayer_stop"].values
    out = {}
    if "update_rms" in ds.data_vars and "hidden_rms" in ds.data_vars:
        rel = snapshot(relative_update(ds), None, fraction).values
        out["relative_update"] = [
            float(np.nansum(rel[a:b])) for a, b in zip(start, stop, strict=True)
        ]
    if "cos_in_out" in ds.data_vars:
        cos = snapshot(ds["cos_in_out"], None, fraction).values
        out["block_influence"] = [
            float(1.0 - cos[a // 2]) if (b - a == 2 and a % 2 == 0) else np.nan
            for a, b in zip(start, stop, strict=True)
        ]
    if not out:
        require(ds, "cos_in_out")  # raises, naming what the proxies need
    coords = {c: results[c] for c in ("unit", "granularity")}
    return xr.Dataset({k: ("unit", np.asarray(v)) for k, v in out.items()}, coords=coords)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1…n with ties given their average rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a, b) -> float:
    """Spearman rank correlation of two sequences over pairs where both are finite (NaN when
    fewer than 3 pairs remain or either side is constant)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    ra, rb = _ranks(a[ok]), _ranks(b[ok])
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def compare_with_proxies(
    ds: xr.Dataset,
    granularity: str = "layer",
    fraction: float = DEFAULT_FRACTION,
    results: xr.Dataset | None = None,
) -> xr.Dataset:
    """True loss increase beside each proxy [unit], with Spearman ρ of every proxy against the
    true increase in attrs (``spearman_block_influence``, ``spearman_relative_update``).
    ``results``: measured results to compare instead of those stored in ``ds``."""
    res = pruning_results(ds, granularity) if results is None else results
    prox = proxies(ds, res, fraction)
    out = xr.merge([res, prox])
    for name in prox.data_vars:
        out.attrs[f"spearman_{name}"] = spearman(prox[name].values, res["prune_loss_increase"])
    return out


# ----------------------------------------------------------------------------- ablation (torch)


def prune_run(
    run: str | Path,
    granularity: str = "layer",
    batches: int = 8,
    batch_size: int | None = None,
    seq_len: int | None = None,
    seed: int = 1234,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
    save: bool = True,
) -> xr.Dataset:
    """Zero-ablate each unit of the run's checkpoint in turn on ``batches`` held-out batches of
    its corpus (the same batches for every unit) and return the results on dim ``unit``.

    batch_size / seq_len default to the run's training values. With ``save`` the results are
    written into the run store (replacing earlier results at this granularity).
    """
    import torch

    from attnres_probe.checkpoint import model_config, read_checkpoint_config, training_config
    from attnres_probe.train import evaluate, load_for_evaluation

    if batches < 1:
        raise AnalysisError(f"batches={batches} must be at least 1")
    run_dir = _run_dir(run)
    config = read_checkpoint_config(run_dir)
    model_cfg = model_config(config, run_dir)
    train_cfg = training_config(config)
    unit_rows = units(model_cfg.residual, model_cfg.n_layers, model_cfg.n_blocks, granularity)
    batch_size = batch_size or int(train_cfg.get("batch_size", 16))
    seq_len = seq_len or int(train_cfg.get("seq_len", 64))
    model, corpus = load_for_evaluation(run_dir, batch_size, seq_len, device)
    total = len(unit_rows) + 1
    with torch.no_grad():
        base = evaluate(model, corpus, batches, batch_size, seq_len, seed=seed)
        if progress is not None:
            progress(1, total, "intact model")
        losses = []
        for i, (name, start, stop) in enumerate(unit_rows):
            skip = set(range(start, stop))
            losses.append(
                evaluate(model, corpus, batches, batch_size, seq_len, seed=seed, skip=skip)
            )
            if progress is not None:
                progress(i + 2, total, name)
    attrs = {
        "batches": batches,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "seed": seed,
        "corpus": str(train_cfg.get("data") or "default"),
    }
    results = results_dataset(unit_rows, granularity, losses, base, attrs)
    if save:
        save_results(run_dir, results)
    return results


def _run_dir(run: str | Path) -> Path:
    path = Path(run)
    if path.suffix == ".zarr":
        path = path.parent
    if path.is_file():
        raise FileNotFoundError(f"run {run} is a file, not a run directory; pass the directory")
    if not path.is_dir():
        raise FileNotFoundError(f"run {run} does not exist; pass a run directory")
    return path


def save_results(run_dir: str | Path, results: xr.Dataset) -> None:
    """Write ``results`` into the run store, merged with stored results of other granularities."""
    from attnres_probe.store import open_run, write_static_variables

    run_dir = _run_dir(run_dir)
    try:
        old = pruning_results(open_run(run_dir), None)
    except (AnalysisError, FileNotFoundError):
        old = None
    merged = merge_results(old, results)
    write_static_variables(run_dir, stored_arrays(merged), attrs=merged.attrs)
