"""Reading a run: :func:`open_run` gives the recording as an ``xarray.Dataset``.

The reader trusts only the commit marker: every per-step array is cut to ``n_steps``, so a
run being written reads as a consistent prefix of complete steps. Damage that leaves the
rest readable gives a partial read — a chunk that is missing or fails its checksum is NaN,
an unusable variable is left out — announced by a :class:`RunStoreWarning` and recorded in
``ds.attrs['dropped']``. Anything else raises :class:`RunStoreError`, never zarr's own errors.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from attnres_probe.store import chunkfile
from attnres_probe.store.damage import describe_spans, metadata_problem, missing_rows
from attnres_probe.store.header import effective_status, open_group, read_header, writer_alive
from attnres_probe.store.location import Location, locate
from attnres_probe.store.repair import repair as repair_store
from attnres_probe.store.schema import (
    ATTNRES,
    HIDDEN_ATTRS,
    LAZY_BYTES,
    ROLE_KEY,
    SCHEMA_VERSION,
    STEP,
    RunStoreError,
    RunStoreWarning,
    as_public,
    dims_of,
    role,
    run_error,
)

# xarray (with pandas: ~70 MB, ~1 s) is imported where a Dataset is built, not here: every
# training process imports the store to write its run and never reads one.
if TYPE_CHECKING:
    import xarray as xr

MAX_ELEMENTS = 2**31
REREADS = 3  # tries to read a run whose recording is being replaced


def warn_dropped(shown: str, notes: list[str], stacklevel: int) -> None:
    """The RunStoreWarning of a partial read; its ``notes`` attribute lists what was lost."""
    warning = RunStoreWarning(f"run {shown} was read in part: {'; '.join(notes)}")
    warning.notes = tuple(notes)
    warnings.warn(warning, stacklevel=stacklevel + 1)


# ----------------------------------------------------------------------------- chunks


def _read_rows(arr, rows: int | None, name: str, notes: list[str]) -> np.ndarray:
    """``arr[:rows]`` (all of it for rows=None); float chunks that fail to decode are NaN."""
    try:
        return np.asarray(arr[slice(0, rows) if rows is not None else ...])
    except Exception as err:  # noqa: BLE001 - damaged bytes surface as many error types
        if rows is None or arr.dtype.kind != "f":
            raise
        first_error = f"{type(err).__name__}: {err}"
    out = np.full((rows, *arr.shape[1:]), np.nan, dtype=arr.dtype)
    bad, length = [], arr.chunks[0]
    for a in range(0, rows, length):
        b = min(a + length, rows)
        try:
            out[a:b] = arr[a:b]
        except Exception:  # noqa: BLE001
            bad.append((a, b))
    notes.append(
        f"{name}: damaged chunk(s) at step index {describe_spans(bad)} read as NaN ({first_error})"
    )
    return out


def _read_direct(
    loc: Location,
    name: str,
    arr,
    first: int,
    end: int,
    notes: list[str],
    note_missing: bool = False,
) -> np.ndarray:
    """Rows [first, end) of a plain-layout float array, straight from its chunk files. A
    missing chunk (noted only with ``note_missing``: :func:`missing_rows` reports them at
    open) or a damaged one reads as NaN."""
    length = arr.chunks[0]
    out = np.empty((end - first, *arr.shape[1:]), dtype=np.dtype(arr.dtype))
    bad, gone = [], []

    def read_chunk(i: int) -> None:
        lo, hi = max(first, i * length), min(end, (i + 1) * length)
        target = out[lo - first : hi - first]
        try:
            with open(loc.inside(chunkfile.chunk_path(loc, name, arr, i)), "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            target[...] = np.nan
            gone.append((i * length, min((i + 1) * length, end)))
            return
        except OSError:
            raw = b""  # unreadable: damaged
        block = chunkfile.decode(raw, arr)
        if block is None:
            target[...] = np.nan
            bad.append((i * length, min((i + 1) * length, end)))
        else:
            target[...] = block[lo - i * length : hi - i * length]

    chunks = range(first // length, math.ceil(end / length))
    if len(chunks) > 4:  # file reads, checksums and copies release the GIL
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(read_chunk, chunks))
    else:
        for i in chunks:
            read_chunk(i)
    if bad:
        spans = describe_spans(sorted(bad))
        notes.append(f"{name}: damaged chunk(s) at step index {spans} read as NaN (checksum)")
    if gone and note_missing:
        spans = describe_spans(sorted(gone))
        notes.append(f"{name}: chunk(s) missing at step index {spans}, read as NaN")
    return out


def _direct(loc: Location, arr) -> bool:
    return chunkfile.plain_layout(loc, arr) and arr.dtype.kind == "f"


_LAZY_CLASS: type | None = None


def _lazy(loc: Location, arr, rows: int, name: str, identity):
    """A lazily indexed view of ``arr[:rows]``: only the selected rows are ever read, and only
    from the recording opened (``identity``, see :meth:`Location.identity`)."""
    global _LAZY_CLASS
    from xarray.backends import BackendArray
    from xarray.core import indexing

    if _LAZY_CLASS is None:

        class LazyStepArray(BackendArray):
            def __init__(self, loc, array, rows, name, identity):
                self.loc, self.array, self.name, self.identity = loc, array, name, identity
                self.shape = (rows, *array.shape[1:])
                self.dtype = np.dtype(array.dtype)
                self.direct = _direct(loc, array)

            def __getitem__(self, key):
                support = indexing.IndexingSupport
                return indexing.explicit_indexing_adapter(
                    key, self.shape, support.BASIC if self.direct else support.OUTER, self._raw
                )

            def _raw(self, key):
                self._same_recording()
                try:
                    values = self._read(key)
                finally:  # replaced while it was read: the values (or the error) may be mixed
                    self._same_recording()
                return values

            def _same_recording(self):
                if self.loc.identity() != self.identity:
                    raise run_error(
                        self.loc.shown,
                        "its recording was replaced after it was opened",
                        "open it again",
                    )

            def _read(self, key):
                if self.direct:
                    return self._rows(key)
                try:
                    return np.asarray(self.array.oindex[key])
                except Exception as err:  # noqa: BLE001
                    raise run_error(
                        self.loc.shown,
                        f"reading {self.name!r} failed ({type(err).__name__}: {err})",
                        "open_run(..., lazy=False) reads its damaged chunks as NaN",
                    ) from None

            def _rows(self, key):
                """Basic indexing: read the rows in the range selected, pick the rest in RAM."""
                rows = np.arange(self.shape[0])[key[0]]  # 0-d for an int: the dim goes
                block = np.empty((0, *self.shape[1:]), self.dtype)
                if rows.size:
                    lo, hi = int(rows.min()), int(rows.max()) + 1
                    notes: list[str] = []
                    block = _read_direct(
                        self.loc, self.name, self.array, lo, hi, notes, note_missing=True
                    )
                    if notes:
                        warn_dropped(self.loc.shown, notes, stacklevel=2)
                    if not (rows.ndim == 1 and rows.size == hi - lo and rows[0] == lo):
                        block = block[rows - lo]  # not a plain run of rows
                return block[key[1:]] if rows.ndim == 0 else block[(slice(None), *key[1:])]

        _LAZY_CLASS = LazyStepArray
    return indexing.LazilyIndexedArray(_LAZY_CLASS(loc, arr, rows, name, identity))


# ----------------------------------------------------------------------------- variables


def _step_coordinate(loc: Location, arr, dims, n: int, notes: list[str]):
    """(step labels, usable step count): steps past a damaged step coordinate are dropped."""
    if dims != (STEP,) or arr.dtype.kind not in "iu":
        notes.append(f"step: left out, {dims} {arr.dtype} is not a step coordinate")
        return None, n
    if arr.shape[0] < n:
        notes.append(f"steps {arr.shape[0]}–{n - 1}: dropped, the step coordinate ends there")
        n = arr.shape[0]
    bad = missing_rows(loc, STEP, arr, n)
    try:
        steps = np.asarray(arr[:n])
    except Exception:  # noqa: BLE001 - keep what precedes the first damaged chunk
        parts, length = [], arr.chunks[0]
        for a in range(0, n, length):
            try:
                parts.append(np.asarray(arr[a : min(a + length, n)]))
            except Exception:  # noqa: BLE001
                bad.append((a, min(a + length, n)))
                break
        steps = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if bad:
        cut = min(a for a, _ in bad)
        if cut < n:
            notes.append(f"steps {cut}–{n - 1}: dropped, the step coordinate is damaged there")
        n = cut
    steps = steps[:n]
    # Labels are written from 0, strictly increasing; the fill value -1 marks a row never
    # written (a commit marker counting more steps than were recorded).
    wrong = np.flatnonzero((steps < 0) | np.r_[False, np.diff(steps) <= 0])
    if wrong.size:
        cut = int(wrong[0])
        if steps[cut] < 0:
            why = f"the commit marker n_steps={n} counts steps that were never written"
        else:
            why = (
                f"the step coordinate is not strictly increasing there (step {steps[cut]} "
                f"after step {steps[cut - 1]})"
            )
        notes.append(f"steps {cut}–{n - 1}: dropped, {why}")
        n = cut
    return steps[:n], n


def _is_lazy(lazy, name: str, nbytes: int) -> bool:
    if lazy is None:
        return nbytes > LAZY_BYTES
    if isinstance(lazy, bool):
        return lazy
    return name in lazy


def _variable(
    loc: Location, name: str, arr, dims, n: int, lazy, notes: list[str], creating: bool, identity
):
    """One stored array as an xarray Variable (step arrays cut to ``n``); None if unusable.
    ``creating``: the writer is still creating the store, so a chunk may not be there yet;
    ``identity``: the recording being read (lazy variables read only from it)."""
    import xarray as xr

    per_step = dims[:1] == (STEP,)
    try:
        rows = min(n, arr.shape[0]) if per_step else None
        extent = (rows, *arr.shape[1:]) if per_step else arr.shape
        if math.prod(extent) > MAX_ELEMENTS:
            raise RunStoreError(f"its shape {arr.shape} is implausibly large")
        missing = missing_rows(loc, name, arr, extent[0] if extent else 0)
        if missing and not per_step:
            if creating:
                return None
            raise RunStoreError("its data chunk is missing")
        if missing:
            spans = describe_spans(missing)
            notes.append(f"{name}: chunk(s) missing at step index {spans}, read as NaN")
        nbytes = math.prod(extent) * np.dtype(arr.dtype).itemsize
        # Confined, zarr's own reads cannot check each file, so they happen now, right after
        # locate() checked every file; the direct reads check theirs whenever they come.
        if per_step and _is_lazy(lazy, name, nbytes) and (not loc.confine or _direct(loc, arr)):
            values = _lazy(loc, arr, rows, name, identity)
        elif per_step and _direct(loc, arr):
            values = _read_direct(loc, name, arr, 0, rows, notes)
        else:
            values = as_public(_read_rows(arr, rows, name, notes))
        if per_step and rows < n:
            if arr.dtype.kind != "f":
                raise RunStoreError(f"it holds {rows} of the {n} committed steps")
            notes.append(f"{name}: steps {rows}–{n - 1} are missing on disk, read as NaN")
            pad = np.full((n - rows, *arr.shape[1:]), np.nan, arr.dtype)
            values = np.concatenate([np.asarray(values), pad])
    except Exception as err:  # noqa: BLE001 - one damaged variable never sinks the run
        notes.append(f"{name}: left out ({type(err).__name__}: {err})")
        return None
    attrs = {k: v for k, v in arr.attrs.items() if k not in (ROLE_KEY, "coordinates")}
    return xr.Variable(dims, values, attrs=attrs)


def _dataset(data_vars: dict, coords: dict, attrs: dict, notes: list[str]) -> xr.Dataset:
    """The Dataset of what was read; variables whose sizes disagree are left out."""
    import xarray as xr

    try:
        return xr.Dataset(data_vars, coords=coords, attrs=attrs)
    except Exception:  # noqa: BLE001 - inconsistent sizes: keep whatever agrees
        pass
    ds = xr.Dataset(attrs=attrs)
    for name, var in [*coords.items(), *data_vars.items()]:
        try:
            if name in coords:
                ds = ds.assign_coords({name: var})
            else:
                ds[name] = var
        except Exception as err:  # noqa: BLE001
            notes.append(f"{name}: left out, its sizes disagree with the run ({err})")
    return ds


def _read(loc: Location, lazy, identity) -> tuple[xr.Dataset, list[str]]:
    """The Dataset and the notes on what a partial read left out."""
    header = read_header(loc)
    n = header["n_steps"]
    # A writer creates its arrays before the first commit: until then (or when it died
    # before committing anything) a missing piece has lost nothing.
    creating = n == 0 and header.get("status") == "running"
    group = open_group(loc, "r")
    notes: list[str] = []
    arrays = {}
    for name in loc.children():
        try:
            arr = group[name]
        except Exception as err:  # noqa: BLE001
            if creating:
                continue  # being written right now (it may exist by the next look): no loss
            notes.append(f"{name}: left out, {metadata_problem(loc, name, err)}")
            continue
        if not isinstance(arr, zarr.Array):
            if not creating:
                notes.append(f"{name}: left out, its zarr.json describes a group, not an array")
            continue
        dims = dims_of(arr)
        if dims is not None:
            arrays[name] = (arr, dims)
        elif not creating:
            notes.append(f"{name}: left out, it has no usable dimension names")

    steps = None
    if STEP in arrays:
        steps, n = _step_coordinate(loc, *arrays.pop(STEP), n, notes)
    elif any(dims[:1] == (STEP,) for _, dims in arrays.values()):
        notes.append("step: the step coordinate is missing, steps are numbered by position")

    # Arrays are read side by side: file reads, checksums and copies release the GIL.
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {
            name: pool.submit(_variable, loc, name, arr, dims, n, lazy, notes, creating, identity)
            for name, (arr, dims) in arrays.items()
        }
    coords, data_vars = {}, {}
    for name, future in futures.items():
        var = future.result()
        if var is not None:
            target = coords if role(arrays[name][0]) == "coordinate" else data_vars
            target[name] = var
    if steps is not None:
        coords[STEP] = (STEP, steps)

    attrs = {k: v for k, v in header.items() if k not in HIDDEN_ATTRS}
    attrs["status"] = effective_status(loc, header)
    ds = _dataset(data_vars, coords, attrs, notes)
    ds.attrs["n_steps"] = n
    notes.sort()
    if notes:
        ds.attrs["dropped"] = "; ".join(notes)
    return ds, notes


# ----------------------------------------------------------------------------- public


def open_run(
    path: Any,
    repair: bool = False,
    lazy: bool | Collection[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    confine: Any = None,
) -> xr.Dataset:
    """The recording of a run as an ``xarray.Dataset``, up to its last committed flush.

    path: the run directory or its ``.zarr`` store; a local path or an fsspec URL.
    repair: first trim arrays a killed writer left longer than the commit marker and remove
    its temp files (:func:`repair`; skipped while the run is written); reading works without.
    lazy: which per-step variables stay on disk until selected — None: those over 128 MiB
    (depth_weights of a very long run); True: all; False: none; or a set of names.

    Dims step, sublayer, layer, source (and those of static variables); coords step,
    sublayer with kind / layer_of, layer, source; attrs model_config (a JSON string, see
    :func:`run_config`), residual, n_layers, versions, schema_version, run_name, n_steps,
    status ('running', 'finished', or 'interrupted' when its writer stopped without
    closing), and 'dropped' after a partial read of a damaged store.
    confine: a local folder (e.g. a dashboard's ROOT) that every file read must resolve
    inside, symlinks followed; a run with a file outside it is refused (ConfinementError).
    Raises RunStoreError (RunNotFoundError for a wrong path) when the run cannot be read.
    """
    loc = locate(path, storage_options, confine)
    if repair and not writer_alive(loc, read_header(loc)):  # a live run needs no repair
        loc.check_confined()  # repair writes: never through a link out of the folder
        repair_store(path, storage_options=storage_options)
    for _ in range(REREADS):
        identity = loc.identity()
        try:
            loc.check_confined()  # each try: a replaced recording brings its own files
            ds, notes = _read(loc, lazy, identity)
        except RunStoreError:
            if loc.identity() == identity:
                raise
            continue  # replaced while read: the error may come from the mix
        except Exception as err:  # noqa: BLE001 - never a raw traceback from deep inside zarr
            if loc.identity() != identity:
                continue
            raise run_error(
                loc.shown,
                f"reading failed ({type(err).__name__}: {err})",
                "try `attnres-probe info --repair RUN`; if that does not help the store is damaged",
            ) from err
        if loc.identity() == identity:  # not replaced while read: one recording, not a mix
            break
    else:
        raise run_error(
            loc.shown, f"its recording was replaced {REREADS} times while read", "open it again"
        )
    if notes:
        warn_dropped(loc.shown, notes, stacklevel=2)
    _mark_older_meanings(ds)
    return ds


def _mark_older_meanings(ds: xr.Dataset) -> None:
    """Say on a variable where a run of an older schema recorded it with another meaning."""
    if int(ds.attrs.get("schema_version", SCHEMA_VERSION)) < 2 and "param_grad_norm" in ds:
        if ds.attrs.get("residual") in ATTNRES:
            ds["param_grad_norm"].attrs["note"] = (
                "schema 1: includes the layer's AttnRes pseudo-queries and key scales"
            )


def run_config(ds: xr.Dataset) -> dict[str, Any]:
    """The run's model configuration (``ModelConfig.to_dict()``) from ``attrs['model_config']``."""
    raw = ds.attrs.get("model_config")
    name = ds.attrs.get("run_name", "run")
    fix = "it was recorded without a model configuration"
    if raw is None:
        raise run_error(name, "it has no model_config attribute", fix)
    try:
        config = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (TypeError, ValueError) as err:
        raise run_error(name, f"its model_config is not a JSON object ({err})", fix) from None
    if not isinstance(config, dict):
        raise run_error(name, "its model_config is not a JSON object", fix)
    return config


def store_version(
    path: Any, storage_options: Mapping[str, Any] | None = None, confine: Any = None
) -> str:
    """A cheap token that changes whenever the run commits a flush, its status or its static
    variables change (a cache key for dashboards): ``"{n_steps}-{hash of root zarr.json}"``.
    ``confine``: the root ``zarr.json``, the one file read, must resolve inside it."""
    loc = locate(path, storage_options, confine)
    raw = loc.read("zarr.json")
    header = read_header(loc, raw)
    return f"{header['n_steps']}-{hashlib.blake2b(raw, digest_size=8).hexdigest()}"
