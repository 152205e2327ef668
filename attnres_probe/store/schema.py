"""What a run store holds: the schema constants, the store's errors, and array conventions."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from zarr.codecs import Crc32cCodec

# 2: param_grad_norm holds a layer's own weights only (the AttnRes pseudo-queries moved to
# query_grad_norm); layer_output_rms, layer_grad_norm and the query norms are new.
SCHEMA_VERSION = 2
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

RESIDUALS = ("baseline", "full", "block")  # residual kinds; any other decoder records as baseline
ATTNRES = ("full", "block")


@dataclass(frozen=True)
class Variable:
    """One recorded variable: its dims (``step`` first), what it is called on an axis, its unit,
    its exact meaning, and the residual kinds that record it (any other additive-residual
    decoder, e.g. a Hugging Face model, records what ``baseline`` does)."""

    dims: tuple[str, ...]
    long_name: str
    units: str
    meaning: str
    residuals: tuple[str, ...] = RESIDUALS


# The run schema: every variable the probe records, declared once. The probe's row layout, the
# run coordinates, the synthetic runs, the reader's checks and docs/probe.md's table derive
# from it. A sublayer is one attention or MLP sublayer; RMS means sqrt(mean(x²)) over every
# element of the step's tensors; a missing value is NaN.
VARIABLES: dict[str, Variable] = {
    "loss": Variable(
        ("step",), "training loss", "nats/token", "the loss handed to `p.step` (NaN if none)"
    ),
    "hidden_rms": Variable(
        ("step", "sublayer"),
        "stream RMS entering the sublayer",
        "activation",
        "RMS of the residual stream entering the sublayer — the stream itself, not a norm's "
        "input (baseline and any pre-, post- or sandwich-norm decoder: the residual stream before "
        "the sublayer; AttnRes: the aggregated input h_l); parallel sublayers read the same stream",
    ),
    "update_rms": Variable(
        ("step", "sublayer"),
        "sublayer update RMS",
        "activation",
        "RMS of what the sublayer adds to the stream: its output f_l, after its post-norm where "
        "it has one; output − input where the sublayer adds the residual itself",
    ),
    "grad_norm": Variable(
        ("step", "sublayer"),
        "gradient norm at the sublayer update",
        "gradient",
        "‖∂loss/∂f_l‖₂ over the batch, f_l the update of `update_rms` (all its consumers summed)",
    ),
    "param_grad_norm": Variable(
        ("step", "layer"),
        "layer weight-gradient norm",
        "gradient",
        "‖gradient‖₂ of the transformer layer's own weights (attention, MLP, their norms) when "
        "`p.step` is called, before clipping; AttnRes pseudo-queries are in `query_grad_norm`",
    ),
    "query_grad_norm": Variable(
        ("step", "sublayer"),
        "pseudo-query gradient norm",
        "gradient",
        "‖gradient‖₂ of the sublayer's AttnRes pseudo-query and key scale, before clipping",
        ATTNRES,
    ),
    "query_grad_norm_out": Variable(
        ("step",),
        "output pseudo-query gradient norm",
        "gradient",
        "the same for the model-output AttnRes op",
        ATTNRES,
    ),
    "depth_weights": Variable(
        ("step", "sublayer", "source"),
        "depth-attention weight",
        "1",
        "softmax weight of each depth source, mean over batch and tokens; NaN where the source "
        "does not exist at that sublayer",
        ATTNRES,
    ),
    "depth_entropy": Variable(
        ("step", "sublayer"),
        "depth-attention entropy",
        "nats",
        "mean over tokens of the entropy of the depth softmax",
        ATTNRES,
    ),
    "depth_weights_out": Variable(
        ("step", "source"),
        "output depth-attention weight",
        "1",
        "`depth_weights` of the model-output AttnRes op",
        ATTNRES,
    ),
    "depth_entropy_out": Variable(
        ("step",),
        "output depth-attention entropy",
        "nats",
        "`depth_entropy` of the model-output AttnRes op",
        ATTNRES,
    ),
    "cos_in_out": Variable(
        ("step", "layer"),
        "cosine, stream in vs out",
        "1",
        "mean over tokens of cos(stream entering the layer, stream leaving it): a pruning proxy",
    ),
    "layer_output_rms": Variable(
        ("step", "layer"),
        "layer output RMS",
        "activation",
        "RMS of what the layer hands on: baseline (and other decoders), the stream after the "
        "layer; Block AttnRes, the block's partial sum after the layer; Full AttnRes, the "
        "source the layer adds last (its MLP update)",
    ),
    "layer_grad_norm": Variable(
        ("step", "layer"),
        "layer output gradient norm",
        "gradient",
        "‖∂loss/∂(that output)‖₂ over the batch, all its consumers summed",
    ),
    "nonfinite": Variable(
        ("step",),
        "non-finite statistics",
        "count",
        "how many of the step's statistics are NaN or Inf",
    ),
}

# Name -> dims of every schema variable (the store itself accepts any variables).
SCHEMA_VARIABLES: dict[str, tuple[str, ...]] = {n: v.dims for n, v in VARIABLES.items()}


def recorded_variables(residual: str) -> dict[str, tuple[str, ...]]:
    """Name -> dims of the variables a model of residual kind ``residual`` records."""
    if residual not in RESIDUALS:
        raise ValueError(f"residual={residual!r} is not one of {', '.join(RESIDUALS)}")
    return {n: v.dims for n, v in VARIABLES.items() if residual in v.residuals}


def variable_attrs(name: str) -> dict[str, str]:
    """``long_name`` and ``units`` of a schema variable (empty for any other name)."""
    v = VARIABLES.get(name)
    return {} if v is None else {"long_name": v.long_name, "units": v.units}


def variables_table() -> str:
    """The schema as a Markdown table (docs/probe.md carries it between markers)."""
    lines = ["| variable | dims | unit | kinds | meaning |", "|---|---|---|---|---|"]
    for name, v in VARIABLES.items():
        kinds = "all" if v.residuals == RESIDUALS else ", ".join(v.residuals)
        lines.append(f"| `{name}` | {', '.join(v.dims)} | {v.units} | {kinds} | {v.meaning} |")
    return "\n".join(lines)


class RunStoreError(ValueError):
    """A run cannot be read or written; the message names the run, the problem and the fix."""


class RunNotFoundError(RunStoreError, FileNotFoundError):
    """The path does not exist or holds no run store."""


class ConfinementError(RunStoreError):
    """A file of the run resolves outside the folder its reader is confined to."""


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


def schema_coords(
    n_layers: int,
    source_names: Collection[str] = (),
    kinds: Sequence[str] | None = None,
    layer_of: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The run's coordinates: ``sublayer`` with ``kind`` (attn/mlp) and ``layer_of``,
    ``layer`` [n_layers], and ``source`` (names) when the model has depth sources.

    kinds/layer_of: per sublayer, for decoders whose layers are not one attention then one MLP
    sublayer (default: that alternation). Pass the result as RunWriter's ``coords``.
    """
    if kinds is None:
        kinds = ["attn", "mlp"] * n_layers
    if layer_of is None:
        layer_of = [index // 2 for index in range(len(kinds))]
    if len(kinds) != len(layer_of):
        raise ValueError(f"{len(kinds)} sublayer kinds but {len(layer_of)} layer_of entries")
    coords: dict[str, Any] = {
        "sublayer": np.arange(len(kinds), dtype=np.int64),
        "kind": ("sublayer", np.array(list(kinds), dtype=object)),
        "layer_of": ("sublayer", np.asarray(layer_of, dtype=np.int64)),
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
