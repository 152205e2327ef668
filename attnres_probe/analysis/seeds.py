"""Runs that differ only in their seed: the same model and the same training recipe.

A run made by this project's training loop records its recipe in ``train_config`` (JSON
attrs, with the ``seed``); two runs whose model configuration and recipe agree except for the
seed are repeats of one experiment, drawn as a mean with a band and compared seed by seed. A
run without a recorded recipe is a group of its own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import xarray as xr

from attnres_probe.analysis.select import model_config, train_config


def run_seed(ds: xr.Dataset) -> int | None:
    """The run's training seed, or None when it did not record one."""
    seed = train_config(ds).get("seed")
    return int(seed) if isinstance(seed, int | float) else None


def _experiment(ds: xr.Dataset) -> str | None:
    """What a run is apart from its seed, as a canonical string (None: unknown recipe)."""
    recipe = train_config(ds)
    if "seed" not in recipe:
        return None
    recipe.pop("seed")
    key = {"model": model_config(ds), "residual": ds.attrs.get("residual"), "train": recipe}
    return json.dumps(key, sort_keys=True, default=str)


def seed_groups(runs: Mapping[str, xr.Dataset]) -> dict[str, list[str]]:
    """The runs (name -> Dataset) grouped by experiment, in order of first appearance: label
    -> run names. A group of several runs is labelled by its residual kind and size (e.g.
    ``block · 32 layers``, made unique), a lone run by its own name."""
    members: dict[str, list[str]] = {}
    for name, ds in runs.items():
        key = _experiment(ds)
        members.setdefault(key if key is not None else f"run:{name}", []).append(name)
    out: dict[str, list[str]] = {}
    for names in members.values():
        if len(names) == 1:
            label = names[0]
        else:
            ds = runs[names[0]]
            layers = model_config(ds).get("n_layers", ds.attrs.get("n_layers", "?"))
            label = f"{ds.attrs.get('residual', 'run')} · {layers} layers"
        base, n = label, 2
        while label in out or (label != names[0] and label in runs):
            label, n = f"{base} #{n}", n + 1
        out[label] = names
    return out
