"""What a run store holds: the schema constants, the store's errors, and array conventions."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np
from zarr.codecs import Crc32cCodec

SCHEMA_VERSION = 1
STORE_NAME = "recording.zarr"
STEP = "step"
ROLE_KEY = "store_role"  # array attribute: "coordinate" or "variable"
WRITER_KEY = "writer"  # root attribute: the process holding the run open for writing
RECORDING_KEY = "recording_id"  # root attribute: a new id for each recording made at a path
HIDDEN_ATTRS = (WRITER_KEY, "static_revision")  # root attributes not shown in ds.attrs
CHUNK_TARGET_STEPS = 256
# Chunk files named c.I.J side by side in the array's folder: one listing finds them all.
CHUNK_KEYS = {"name": "default", "separator": "."}
CHUNK_MAX_BYTES = 16 * 2**20
LAZY_BYTES = 128 * 2**20  # open_run's default: larger per-step variables are read on access
MAX_STEPS = 10**12  # a commit marker counting more steps than this is damaged
LIVE_WINDOW_S = 120.0  # a 'running' run written from another host counts as live this long

# The variables the probe records (DESIGN.md §4); the store itself accepts any.
SCHEMA_VARIABLES: dict[str, tuple[str, ...]] = {
    "loss": ("step",),
    "hidden_rms": ("step", "sublayer"),
    "update_rms": ("step", "sublayer"),
    "grad_norm": ("step", "sublayer"),
    "param_grad_norm": ("step", "layer"),
    "depth_weights": ("step", "sublayer", "source"),
    "depth_entropy": ("step", "sublayer"),
    "cos_in_out": ("step", "layer"),
    "nonfinite": ("step",),
    "depth_weights_out": ("step", "source"),
    "depth_entropy_out": ("step",),
}


class RunStoreError(ValueError):
    """A run cannot be read or written; the message names the run, the problem and the fix."""


class RunNotFoundError(RunStoreError, FileNotFoundError):
    """The path does not exist or holds no run store."""


class RunStoreWarning(UserWarning):
    """A run was read in part; the message (and ``ds.attrs['dropped']``) says what was lost."""


def run_error(shown: str, problem: str, fix: str) -> RunStoreError:
    """``run SHOWN: PROBLEM; FIX`` as a RunStoreError."""
    return RunStoreError(f"run {shown}: {problem}; {fix}")


def compressors() -> list:
    """The codecs after serialisation, for every array.

    No compression: float32 training statistics shrink by only 10-20 % under zstd, and
    decompressing halves the read speed of a long run. CRC32C turns any damaged byte into a
    detected error instead of a silently wrong number.
    """
    return [Crc32cCodec()]


def schema_coords(n_layers: int, source_names: Collection[str] = ()) -> dict[str, Any]:
    """The coordinates of the run schema for a model of ``n_layers`` transformer layers:
    ``sublayer`` [2L] with ``kind`` (attn/mlp) and ``layer_of``, ``layer`` [L], and
    ``source`` (names) when the model has depth sources. Pass it as RunWriter's ``coords``."""
    n_sub = 2 * n_layers
    coords: dict[str, Any] = {
        "sublayer": np.arange(n_sub, dtype=np.int64),
        "kind": ("sublayer", np.array(["attn", "mlp"] * n_layers, dtype=object)),
        "layer_of": ("sublayer", np.arange(n_sub, dtype=np.int64) // 2),
        "layer": np.arange(n_layers, dtype=np.int64),
    }
    if len(source_names):
        coords["source"] = np.array(list(source_names), dtype=object)
    return coords


def role(arr) -> str:
    """'coordinate' or 'variable': how a stored array appears in the Dataset."""
    return str(arr.attrs.get(ROLE_KEY, "variable"))


def dims_of(arr) -> tuple[str, ...] | None:
    """The array's dimension names, or None when missing or inconsistent with its shape."""
    names = arr.metadata.dimension_names
    if arr.ndim == 0 and not names:
        return ()
    if names is None or len(names) != arr.ndim or any(not isinstance(n, str) for n in names):
        return None
    return tuple(names)


def as_stored(values: Any) -> np.ndarray:
    """``values`` as an array zarr stores without warnings: strings as StringDType."""
    arr = np.asarray(values)
    if arr.dtype.kind in "OUS" or isinstance(arr.dtype, np.dtypes.StringDType):
        return arr.astype(np.dtypes.StringDType())
    return arr


def as_public(values: np.ndarray) -> np.ndarray:
    """Stored strings back as object arrays (what xarray code expects)."""
    if isinstance(values.dtype, np.dtypes.StringDType):
        return values.astype(object)
    return values
