"""Layer-pruning sensitivity: remove each unit of a trained model and measure the loss it costs.

A *unit* is a layer (its two sublayers), one sublayer, or (Block AttnRes) one block of
sublayers, removed on the same held-out batches of the run's corpus
(``model(idx, skip=..., removal=...)``). Removing a unit has two meanings (``REMOVALS``):

- ``"zero"``: its updates are replaced by zeros. In a baseline that removes the unit from the
  residual stream. In AttnRes a zero source stays *inside* every later depth softmax (its key
  RMSNorm(0) = 0 gives logit 0) and takes weight there.
- ``"mask"`` (AttnRes only, their default): the removed source leaves every later depth
  softmax, which renormalises over the sources that remain — the unit is gone.

In this project's AttnRes models the two give one function up to the norms' eps: the weight a
zero source takes scales every other source's weight by one factor, and each reader of an
AttnRes output (a sublayer's pre-norm, the final norm) is an RMSNorm, which undoes a uniform
scale. "mask" is the default because it removes the unit by construction, not through that
invariance (a reader without a norm would break it).

The true cost is compared with the cheap proxies the probe recorded during training:

- ``block_influence`` = 1 − ``cos_in_out`` of a layer. ShortGPT's Block Influence is the same
  quantity when the cosine is taken per token and averaged over tokens, as the probe records
  it; defined for layer units only.
- ``relative_update``: the unit's summed ``update_rms / hidden_rms``.

Results live in the run store as static variables on a ``unit`` dim (see ``STORED``), one row
per unit, every granularity and removal side by side (coordinates ``granularity`` and
``removal``; results stored before removal modes existed are ``"zero"``).

:func:`prune_model` measures the same for any model the probe reads (a Hugging Face decoder, or
a model trained in one's own loop) on batches the caller hands in: a unit removed means its
update is not added to the stream ("zero" removal), through the layers the probe discovers;
``run=`` stores the results in that run like ``prune`` does.

Only :func:`prune_run` and :func:`prune_model` need torch; everything else reads xarray.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from attnres_probe.analysis.dilution import relative_update
from attnres_probe.analysis.select import (
    DEFAULT_FRACTION,
    AnalysisError,
    require,
    run_name,
    snapshot,
)
from attnres_probe.analysis.stats import spearman
from attnres_probe.checkpoint import CONFIG_FILE
from attnres_probe.store import open_run, write_static_variables

GRANULARITIES = ("layer", "sublayer", "block")
REMOVALS = ("mask", "zero")
# Stored variable name -> what it holds; all on dim `unit` except the 0-d base loss.
STORED = {
    "prune_unit_name": "unit label: L3, L3.attn, block2",
    "prune_granularity": "layer, sublayer or block",
    "prune_removal": "mask (the source leaves every later depth softmax) or zero (zero update)",
    "prune_sublayer_start": "first sublayer the unit removes",
    "prune_sublayer_stop": "one past the last sublayer it removes",
    "prune_loss": "held-out loss with the unit removed",
    "prune_loss_increase": "prune_loss - base loss",
    "prune_base_loss": "held-out loss of the intact model in the same evaluation",
    "prune_batches": "held-out batches each loss averages",
}
ProgressCallback = Callable[[int, int, str], None]  # (done, total, unit just evaluated)
# How a run without a checkpoint is pruned (the messages of prune, export and the dashboard).
NO_CHECKPOINT_HINT = (
    "a run recorded from your own training loop is measured from Python on the live model: "
    "attnres_probe.prune_model(model, batches, run=RUN); for this project's models, "
    "attnres_probe.checkpoint.save_checkpoint(RUN, model.state_dict(), model.cfg.to_dict()) "
    "saves the checkpoint `attnres-probe prune RUN` reads"
)


# ----------------------------------------------------------------------------- removal


def default_removal(residual: str) -> str:
    """``"mask"`` for AttnRes runs (the unit leaves every depth softmax), ``"zero"`` for a
    baseline (it has no depth softmax)."""
    return "zero" if residual == "baseline" else "mask"


def check_removal(residual: str, removal: str | None) -> str:
    """``removal`` checked against the run's kind (None: the kind's default)."""
    if removal is None:
        return default_removal(residual)
    if removal not in REMOVALS:
        raise AnalysisError(f"removal={removal!r} is not one of {', '.join(REMOVALS)}")
    if removal == "mask" and residual == "baseline":
        raise AnalysisError(
            "removal='mask' needs an AttnRes run: a baseline has no depth softmax to leave, "
            "only 'zero' (its update replaced by zeros); use removal 'zero'"
        )
    return removal


def run_residual(run: str | Path) -> str | None:
    """The residual kind of a run's checkpoint (its ``config.json``), read without torch;
    None when the run has no readable checkpoint configuration (loading it says why)."""
    try:
        document = json.loads((_run_dir(run) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    model = document.get("model") if isinstance(document, dict) else None
    residual = model.get("residual") if isinstance(model, dict) else None
    return residual if isinstance(residual, str) else None


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
    unit_rows: list[tuple],
    granularity: str,
    losses: list[float],
    base_loss: float,
    attrs: dict,
    removal: str = "zero",
) -> xr.Dataset:
    """Pruning results for one granularity and removal as a Dataset on dim ``unit``."""
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
            "removal": ("unit", np.asarray([removal] * len(names), dtype=object)),
            "sublayer_start": ("unit", np.asarray([u[1] for u in unit_rows], dtype=np.int64)),
            "sublayer_stop": ("unit", np.asarray([u[2] for u in unit_rows], dtype=np.int64)),
        },
        attrs={**attrs, "removal": removal},
    )
    return ds


def pruning_results(
    ds: xr.Dataset, granularity: str | None = "layer", removal: str | None = None
) -> xr.Dataset:
    """The stored pruning results of a run on dim ``unit``: ``prune_loss``,
    ``prune_loss_increase``, ``prune_batches`` and ``prune_base_loss``; coords
    ``granularity``, ``removal``, ``sublayer_start``, ``sublayer_stop``.

    granularity None: every stored row ([unit] base losses). Otherwise one granularity and
    one removal: ``removal``, or (None) the run's default removal when stored, else the one
    that is (0-d base loss: one evaluation has one intact-model loss)."""
    if "prune_loss" not in ds.data_vars:
        raise AnalysisError(
            f"run {run_name(ds)!r} has no pruning results; run `attnres-probe prune RUN` first "
            f"(runs with a checkpoint), or {NO_CHECKPOINT_HINT}"
        )
    n = ds.sizes["unit"]
    removals = (
        np.asarray(ds["prune_removal"].values).astype(str)
        if "prune_removal" in ds.data_vars
        else np.full(n, "zero")
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
        removal=("unit", removals),
        sublayer_start=("unit", np.asarray(ds["prune_sublayer_start"].values, dtype=np.int64)),
        sublayer_stop=("unit", np.asarray(ds["prune_sublayer_stop"].values, dtype=np.int64)),
    )
    out.attrs = dict(ds["prune_loss"].attrs)
    if granularity is None:
        return out
    at = out.isel(unit=np.flatnonzero(out["granularity"].values == granularity))
    if at.sizes["unit"] == 0:
        have = sorted(set(out["granularity"].values.tolist()))
        raise AnalysisError(
            f"no pruning results at granularity={granularity!r} (the run has {have}); "
            f"run `attnres-probe prune RUN --granularity {granularity}`"
        )
    stored = stored_removals(at)
    if removal is None:
        preferred = default_removal(str(ds.attrs.get("residual", "baseline")))
        removal = preferred if preferred in stored else stored[0]
    chosen = at.isel(unit=np.flatnonzero(at["removal"].values == removal))
    if chosen.sizes["unit"] == 0:
        raise AnalysisError(
            f"no pruning results by {granularity} with removal={removal!r} (the run has "
            f"{stored}); run `attnres-probe prune RUN --granularity {granularity} "
            f"--removal {removal}`"
        )
    chosen.attrs["removal"] = removal
    if "unit" in chosen["prune_base_loss"].dims:
        chosen["prune_base_loss"] = chosen["prune_base_loss"].isel(unit=0, drop=True)
    return chosen


def stored_removals(results: xr.Dataset) -> list[str]:
    """The removal modes present in ``results`` (from :func:`pruning_results`), in
    ``REMOVALS`` order."""
    have = set(np.asarray(results["removal"].values).astype(str).tolist())
    return [r for r in REMOVALS if r in have]


def removals_at(ds: xr.Dataset, granularity: str) -> list[str]:
    """The removal modes a run has stored results for at ``granularity`` (REMOVALS order;
    empty without any)."""
    try:
        rows = pruning_results(ds, None)
    except AnalysisError:
        return []
    return stored_removals(
        rows.isel(unit=np.flatnonzero(rows["granularity"].values == granularity))
    )


def _per_unit(results: xr.Dataset) -> xr.Dataset:
    """``results`` with its intact-model loss repeated on every unit (as stored)."""
    base = results["prune_base_loss"]
    if "unit" not in base.dims:
        results = results.assign(prune_base_loss=base.broadcast_like(results["prune_loss"]))
    return results


def merge_results(old: xr.Dataset | None, new: xr.Dataset) -> xr.Dataset:
    """Stored results with ``new``'s granularity and removal replaced by ``new`` (others
    kept), on dim ``unit`` with ``prune_base_loss`` per unit."""
    new = _per_unit(new)
    if old is None:
        return new
    old = _per_unit(old)
    g, r = str(new["granularity"].values[0]), str(new["removal"].values[0])
    same = (old["granularity"].values == g) & (old["removal"].values.astype(str) == r)
    kept = old.isel(unit=np.flatnonzero(~same))
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
        "prune_removal": (("unit",), np.asarray(results["removal"].values, dtype=object)),
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
    coords = {c: results[c] for c in ("unit", "granularity", "removal") if c in results.coords}
    return xr.Dataset({k: ("unit", np.asarray(v)) for k, v in out.items()}, coords=coords)


def compare_with_proxies(
    ds: xr.Dataset,
    granularity: str = "layer",
    fraction: float = DEFAULT_FRACTION,
    removal: str | None = None,
    results: xr.Dataset | None = None,
) -> xr.Dataset:
    """True loss increase beside each proxy [unit], with Spearman ρ of every proxy against the
    true increase in attrs (``spearman_block_influence``, ``spearman_relative_update``) and
    the ``removal`` the losses were measured with (see :func:`pruning_results`).
    ``results``: measured results to compare instead of those stored in ``ds``."""
    res = pruning_results(ds, granularity, removal) if results is None else results
    prox = proxies(ds, res, fraction)
    out = xr.merge([res, prox])
    for name in prox.data_vars:
        out.attrs[f"spearman_{name}"] = spearman(prox[name].values, res["prune_loss_increase"])
    return out


# ----------------------------------------------------------------------------- greedy path
# The greedy pruning path (made by ``tools.prune_path.prune_path``): removing the cheapest 1, 2,
# … layers together, stored as ``prune_path_unit`` / ``prune_path_loss`` on dim ``n_removed``.

DEFAULT_TOLERANCE = 0.01  # 1 % of the intact model's held-out loss
PATH_VARIABLES = ("prune_path_unit", "prune_path_loss")


def _relative_increase(loss: np.ndarray, base: float) -> np.ndarray:
    return (np.asarray(loss, dtype=float) - base) / base


def removable_alone(
    ds: xr.Dataset, tolerance: float = DEFAULT_TOLERANCE, removal: str | None = None
) -> int:
    """How many layers each cost at most ``tolerance`` × the intact held-out loss when removed
    on their own (from the stored layer pruning results; ``removal`` None: the run's
    default, see ``pruning_results``)."""
    res = pruning_results(ds, "layer", removal)
    base = float(res["prune_base_loss"])
    return int((_relative_increase(res["prune_loss"].values, base) <= tolerance).sum())


def path(ds: xr.Dataset) -> xr.Dataset:
    """The stored greedy path [n_removed]: ``unit`` (layer added), ``loss``,
    ``relative_increase`` over the intact model's loss; attrs ``base_loss`` and ``removal``."""
    missing = [v for v in PATH_VARIABLES if v not in ds.data_vars]
    if missing:
        raise AnalysisError(
            f"run {run_name(ds)!r} has no greedy pruning path; make it with "
            "attnres_probe.tools.prune_path.prune_path(RUN)"
        )
    removal = str(ds["prune_path_loss"].attrs.get("removal", "zero"))
    base = float(pruning_results(ds, "layer", removal)["prune_base_loss"])
    loss = np.asarray(ds["prune_path_loss"].values, dtype=float)
    n = np.arange(1, loss.size + 1)
    return xr.Dataset(
        {
            "unit": ("n_removed", np.asarray(ds["prune_path_unit"].values).astype(str)),
            "loss": ("n_removed", loss),
            "relative_increase": ("n_removed", _relative_increase(loss, base)),
        },
        coords={"n_removed": n},
        attrs={"base_loss": base, "removal": removal},
    )


def removable_together(ds: xr.Dataset, tolerance: float = DEFAULT_TOLERANCE) -> int:
    """The largest k such that removing the k cheapest layers together, and every shorter
    prefix of them, costs at most ``tolerance`` × the intact held-out loss."""
    rel = path(ds)["relative_increase"].values
    over = np.flatnonzero(~(rel <= tolerance))
    return int(over[0]) if over.size else int(rel.size)


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
    removal: str | None = None,
) -> xr.Dataset:
    """Remove each unit of the run's checkpoint in turn on ``batches`` held-out batches of its
    corpus (the same batches for every unit) and return the results on dim ``unit``.

    removal: ``"mask"`` or ``"zero"`` (see the module docstring); None picks the run's default
    (mask for AttnRes, zero for a baseline, which has no other). batch_size / seq_len default
    to the run's training values. With ``save`` the results are written into the run store
    (replacing earlier results at this granularity and removal).
    """
    import torch

    from attnres_probe.checkpoint import model_config, training_config
    from attnres_probe.train import evaluate, load_for_evaluation

    if batches < 1:
        raise AnalysisError(f"batches={batches} must be at least 1")
    run_dir = _run_dir(run)
    config = checkpoint_config(run_dir)
    model_cfg = model_config(config, run_dir)
    train_cfg = training_config(config)
    unit_rows = units(model_cfg.residual, model_cfg.n_layers, model_cfg.n_blocks, granularity)
    removal = check_removal(model_cfg.residual, removal)
    batch_size = batch_size or int(train_cfg.get("batch_size", 16))
    seq_len = seq_len or int(train_cfg.get("seq_len", 64))
    model, corpus = load_for_evaluation(run_dir, batch_size, seq_len, device)
    with torch.no_grad():
        base = evaluate(model, corpus, batches, batch_size, seq_len, seed=seed)
    if progress is not None:
        progress(1, len(unit_rows) + 1, "intact model")
    removed = [(name, set(range(start, stop))) for name, start, stop in unit_rows]
    losses = held_out_losses(
        model, corpus, removed, removal, batches, batch_size, seq_len, seed, progress, done=1
    )
    attrs = {
        "batches": batches,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "seed": seed,
        "corpus": str(train_cfg.get("data") or "default"),
    }
    results = results_dataset(unit_rows, granularity, losses, base, attrs, removal)
    if save:
        save_results(run_dir, results)
    return results


def held_out_losses(
    model,
    corpus,
    removed: list[tuple[str, set[int]]],
    removal: str,
    batches: int,
    batch_size: int,
    seq_len: int,
    seed: int,
    progress: ProgressCallback | None = None,
    done: int = 0,
) -> list[float]:
    """The held-out loss of ``model`` with each (name, sublayers) of ``removed`` taken out in
    turn, on the same batches each time; ``progress(done + k, done + len(removed), name)``
    after the k-th."""
    import torch

    from attnres_probe.train import evaluate

    losses = []
    with torch.no_grad():
        for k, (name, skip) in enumerate(removed, start=1):
            losses.append(
                evaluate(
                    model,
                    corpus,
                    batches,
                    batch_size,
                    seq_len,
                    seed=seed,
                    skip=skip,
                    removal=removal,
                )
            )
            if progress is not None:
                progress(done + k, done + len(removed), name)
    return losses


def checkpoint_config(run: str | Path) -> dict:
    """The run's checkpoint configuration (``checkpoint.read_checkpoint_config``); a run
    without a checkpoint is told how to be pruned all the same (:data:`NO_CHECKPOINT_HINT`)."""
    from attnres_probe.checkpoint import (
        CHECKPOINT_FILE,
        CheckpointNotFoundError,
        read_checkpoint_config,
    )

    try:
        return read_checkpoint_config(run)
    except CheckpointNotFoundError as err:
        path = _run_dir(run)
        if (path / CHECKPOINT_FILE).is_file():
            raise
        raise CheckpointNotFoundError(f"{err}; {NO_CHECKPOINT_HINT}") from None


def prune_model(
    model: Any,
    batches: Iterable[Any],
    loss_fn: Callable[[Any, Any], Any] | None = None,
    granularity: str = "layer",
    run: str | Path | None = None,
    layers: Any = None,
    progress: ProgressCallback | None = None,
) -> xr.Dataset:
    """Remove each layer (or sublayer) of ``model`` in turn on ``batches`` and return the held-out
    loss increase on dim ``unit``, as :func:`prune_run` does for a run's checkpoint.

    A unit removed means its update is not added to the residual stream ("zero" removal): the
    output its update is read from (the probe's discovered layers, or ``layers=`` as for the
    probe) is replaced by zeros, or, where the sublayer adds the stream itself, by the stream it
    was handed. ``loss_fn(model, batch)`` -> scalar loss; default: ``model(**batch).loss`` for
    a dict batch (it needs ``labels``), next-token cross-entropy of ``model(batch)`` for a
    tensor of token ids [B, T]. The model runs in eval mode without gradients and is left as it
    was. ``run``: store the results in that run (its recording must have the model's layers),
    beside other granularities, so ``info``, ``export --figure pruning`` and the dashboard show
    them.
    """
    import torch

    from attnres_probe.hooks.discovery import discover_layers
    from attnres_probe.hooks.ranks import unwrap

    if granularity not in ("layer", "sublayer"):
        raise AnalysisError(f"granularity={granularity!r} is not one of layer, sublayer")
    batches = list(batches)
    if not batches:
        raise AnalysisError("batches is empty; pass at least one held-out batch")
    module = unwrap(model)
    specs = discover_layers(module, layers)
    unit_rows, first = [], 0
    for index, spec in enumerate(specs):
        stop = first + len(spec.sublayers)
        if granularity == "layer":
            unit_rows.append((f"L{index}", first, stop))
        else:
            unit_rows += [
                (f"L{index}.{sub.kind}", first + i, first + i + 1)
                for i, sub in enumerate(spec.sublayers)
            ]
        first = stop
    if run is not None:
        _check_run_matches(run, len(specs), first)
    sublayers = [sub for spec in specs for sub in spec.sublayers]
    removed: set[int] = set()
    handles = [
        sub.exit.register_forward_hook(_removal_hook(sub, index, removed), with_kwargs=True)
        for index, sub in enumerate(sublayers)
    ]
    loss_fn = loss_fn or default_loss
    was_training = module.training
    module.eval()
    total = len(unit_rows) + 1

    def held_out_loss() -> float:
        return sum(float(loss_fn(model, b)) for b in batches) / len(batches)

    try:
        with torch.no_grad():
            base = held_out_loss()
            if progress is not None:
                progress(1, total, "intact model")
            losses = []
            for i, (name, start, stop) in enumerate(unit_rows):
                removed.update(range(start, stop))
                try:
                    losses.append(held_out_loss())
                finally:
                    removed.clear()
                if progress is not None:
                    progress(i + 2, total, name)
    finally:
        for handle in handles:
            handle.remove()
        module.train(was_training)
    attrs = {"batches": len(batches), "model_class": type(module).__name__}
    results = results_dataset(unit_rows, granularity, losses, base, attrs, "zero")
    if run is not None:
        save_results(run, results)
    return results


def _removal_hook(sub: Any, index: int, removed: set[int]) -> Callable:
    """A forward hook dropping sublayer ``index``'s update while it is in ``removed``."""
    from attnres_probe.hooks.discovery import residual_position
    from attnres_probe.hooks.taps import first_tensor, replace_first_tensor

    at = residual_position(sub.modules[-1]) if sub.adds_residual else None

    def hook(module, args, kwargs, output):
        if index not in removed:
            return None
        out = first_tensor(output)
        if out is None:
            return None
        if sub.adds_residual:  # its output is stream + update: hand on the stream alone
            residual = kwargs.get("residual")
            if residual is None and at is not None and len(args) > at:
                residual = args[at]
            return replace_first_tensor(output, residual)
        return replace_first_tensor(output, out.new_zeros(out.shape))

    return hook


def default_loss(model: Any, batch: Any) -> Any:
    """``model(**batch).loss`` for a dict batch; next-token cross-entropy of ``model(batch)``
    (its ``logits``, or the tensor it returns) for token ids [B, T]."""
    import torch
    import torch.nn.functional as F

    if isinstance(batch, dict):
        loss = getattr(model(**batch), "loss", None)
        if loss is None:
            raise AnalysisError(
                f"the model returned no loss for a batch with keys {sorted(batch)}; put "
                "'labels' in each batch or pass loss_fn=lambda model, batch: ..."
            )
        return loss
    if not isinstance(batch, torch.Tensor) or batch.ndim != 2:
        raise AnalysisError(
            f"a batch of type {type(batch).__name__} is neither a dict of model inputs nor token "
            "ids [B, T]; pass loss_fn=lambda model, batch: ... returning a scalar loss"
        )
    out = model(batch[:, :-1])
    logits = getattr(out, "logits", out)
    return F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())


def _check_run_matches(run: str | Path, n_layers: int, n_sublayers: int) -> None:
    """The run's recording has the model's layers and sublayers (results are stored by index)."""
    from attnres_probe.store import open_run

    ds = open_run(_run_dir(run))
    have = (ds.sizes.get("layer", 0), ds.sizes.get("sublayer", 0))
    if have != (n_layers, n_sublayers):
        raise AnalysisError(
            f"run {run} records {have[0]} layers and {have[1]} sublayers but the model has "
            f"{n_layers} and {n_sublayers}; pass the run this model was recorded into"
        )


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
    run_dir = _run_dir(run_dir)
    try:
        old = pruning_results(open_run(run_dir), None)
    except (AnalysisError, FileNotFoundError):
        old = None
    merged = merge_results(old, results)
    write_static_variables(run_dir, stored_arrays(merged), attrs=merged.attrs)
