"""Variables without a step dim (e.g. pruning results) written whole, and the checks every
name, coordinate and attribute of a run passes before it is written. The writer builds on
these; :func:`attnres_probe.store.writer.write_static_variables` is the public entry."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from attnres_probe.store.schema import (
    CHUNK_KEYS,
    ROLE_KEY,
    STEP,
    RunStoreError,
    as_stored,
    compressors,
)


def check_name(name: Any, what: str) -> None:
    """RunStoreError unless ``name`` can name an array: a plain name, not reserved."""
    if not isinstance(name, str) or not name or "/" in name or name.startswith((".", "__")):
        raise RunStoreError(f"{what} name {name!r} is not usable; use a plain name like 'loss'")
    if name == "zarr.json" or name.endswith(".partial"):
        raise RunStoreError(f"{what} name {name!r} is reserved by the store; rename it")


def normalise_coords(
    coords: Mapping[str, Any] | None,
) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """coords as {name: (dims, values)}; a bare array lies along its own dim."""
    out = {}
    for name, value in (coords or {}).items():
        check_name(name, "coordinate")
        if isinstance(value, tuple) and len(value) == 2:
            dims, values = value
            dims = (dims,) if isinstance(dims, str) else tuple(dims)
        else:
            dims, values = (name,), value
        data = as_stored(values)
        if data.ndim != len(dims):
            raise RunStoreError(
                f"coordinate {name!r} has {data.ndim}-d values for dims {dims}; "
                "pass (dims, values) with one dim name per axis"
            )
        if STEP in dims:
            raise RunStoreError(f"coordinate {name!r} is along 'step'; the writer records step")
        out[name] = (dims, data)
    return out


def jsonable(attrs: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in attrs.items():
        if key in ("model_config", "versions") and not isinstance(value, str):
            value = json.dumps(value)
        if isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        try:
            json.dumps(value)
        except TypeError:
            raise RunStoreError(
                f"attribute {key!r}={value!r} is not JSON-serialisable; pass strings, numbers, "
                "lists or dicts"
            ) from None
        out[str(key)] = value
    return out


def write_whole(group, name: str, data: np.ndarray, dims: tuple[str, ...], attrs: dict) -> None:
    """A non-step array written in one chunk, replacing any array of that name."""
    strings = isinstance(data.dtype, np.dtypes.StringDType)
    arr = group.create_array(
        name,
        shape=data.shape,
        chunks=tuple(max(1, s) for s in data.shape),
        dtype=str if strings else data.dtype,
        fill_value=np.nan if data.dtype.kind == "f" else None,
        dimension_names=dims,
        attributes=dict(attrs),
        compressors=compressors(),
        chunk_key_encoding=CHUNK_KEYS,
        overwrite=True,
        config={"write_empty_chunks": True},
    )
    if data.size:
        arr[...] = data


def write_statics(group, arrays, coords, attrs, sizes: Mapping[str, int], taken) -> None:
    """Validate every static array and coordinate against the run's dim sizes, then write."""
    sizes = dict(sizes)
    prepared = [
        (name, dims, data, {ROLE_KEY: "coordinate"})
        for name, (dims, data) in normalise_coords(coords).items()
    ]
    var_attrs = {ROLE_KEY: "variable", **jsonable(attrs or {})}
    for name, (dims, values) in arrays.items():
        check_name(name, "variable")
        dims = (dims,) if isinstance(dims, str) else tuple(dims)
        prepared.append((name, dims, as_stored(values), var_attrs))
    for name, dims, data, _ in prepared:
        if name in taken:
            raise RunStoreError(f"{name!r} is already a per-step variable or coordinate; rename it")
        if STEP in dims:
            raise RunStoreError(
                f"static {name!r} has a 'step' dim; record per-step values with append()"
            )
        if len(dims) != data.ndim:
            raise RunStoreError(f"static {name!r}: dims {dims} do not match its shape {data.shape}")
        for d, n in zip(dims, data.shape, strict=True):
            if sizes.setdefault(d, n) != n:
                raise RunStoreError(
                    f"static {name!r} has {n} entries along {d!r} but the run's {d!r} has "
                    f"{sizes[d]}; pass values of matching length"
                )
    for name, dims, data, array_attrs in prepared:
        write_whole(group, name, data, dims, array_attrs)
