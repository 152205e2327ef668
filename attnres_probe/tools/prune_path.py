"""How many layers a trained model can lose: greedy removal along the single-layer ranking.

Single-layer pruning (``analysis.pruning``) says what removing one layer costs. Removing
several costs more than the sum of their single costs or less, so the number of layers a model
can *lose together* is measured directly: rank the layers by their single-removal loss
increase (cheapest first), then remove the first k of that ranking together for
k = 1 … n_layers on the same held-out batches and record the loss. Removal is the run's
default (``mask`` for AttnRes, ``zero`` for a baseline; see ``analysis.pruning``), and the
ranking comes from the single-layer results of the same removal. The path lives in the run
store as static variables on dim ``n_removed`` (attribute ``removal`` says which):

- ``prune_path_unit`` [n_removed]: the layer added to the removed set at that point;
- ``prune_path_loss`` [n_removed]: held-out loss with the first ``n_removed`` layers removed.

This module computes and stores the path (torch); ``analysis.pruning.path`` and
``removable_together`` read it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import xarray as xr

from attnres_probe.analysis.pruning import (
    default_removal,
    held_out_losses,
    path,
    pruning_results,
)
from attnres_probe.store import open_run, write_static_variables

ProgressCallback = Callable[[int, int, str], None]  # (done, total, unit just added)


def prune_path(
    run: str | Path,
    batches: int | None = None,
    seed: int | None = None,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
    save: bool = True,
) -> xr.Dataset:
    """Remove the cheapest 1, 2, … n_layers layers of the run's checkpoint together with the
    run's default removal (ranked by the stored single-layer results of ``attnres-probe
    prune`` with that removal) and return :func:`path`.

    batches / seed default to those the single-layer results were measured with, so the path
    starts from the same intact loss. With ``save`` the path is written into the run store.
    """
    from attnres_probe.train import load_for_evaluation

    run_dir = Path(run).parent if Path(run).suffix == ".zarr" else Path(run)
    ds = open_run(run_dir)
    removal = default_removal(str(ds.attrs.get("residual", "baseline")))
    single = pruning_results(ds, "layer", removal)
    order = np.argsort(single["prune_loss_increase"].values, kind="stable")
    names = [str(single["unit"].values[i]) for i in order]
    starts = [int(single["sublayer_start"].values[i]) for i in order]
    stops = [int(single["sublayer_stop"].values[i]) for i in order]
    batches = int(batches or single.attrs.get("batches", 8))
    seed = int(seed if seed is not None else single.attrs.get("seed", 1234))
    batch_size = int(single.attrs.get("batch_size", 16))
    seq_len = int(single.attrs.get("seq_len", 64))

    model, corpus = load_for_evaluation(run_dir, batch_size, seq_len, device)

    removed, skip = [], set()
    for name, start, stop in zip(names, starts, stops, strict=True):
        skip = skip | set(range(start, stop))  # the cheapest k layers together
        removed.append((name, skip))
    losses = held_out_losses(
        model, corpus, removed, removal, batches, batch_size, seq_len, seed, progress
    )
    arrays = {
        "prune_path_unit": (("n_removed",), np.asarray(names, dtype=object)),
        "prune_path_loss": (("n_removed",), np.asarray(losses, dtype=np.float32)),
    }
    if save:
        write_static_variables(
            run_dir,
            arrays,
            attrs={
                "batches": batches,
                "seed": seed,
                "ranked_by": "single-layer",
                "removal": removal,
            },
        )
    with_path = ds.assign({k: v for k, v in arrays.items()})
    with_path["prune_path_loss"].attrs["removal"] = removal
    return path(with_path)
