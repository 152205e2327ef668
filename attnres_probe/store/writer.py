"""Writing a run: :class:`RunWriter` appends recorded steps; :func:`write_static_variables`
puts variables without a step dim on the side.

Every per-step array is chunked along ``step`` (``chunk_steps``, 256 by default) and the
writer keeps the current chunk of every array in RAM. A flush rewrites that chunk of every
array whole — one file write each, side by side, never a read-modify-write — and then
commits by rewriting the root ``zarr.json`` with ``n_steps``. Arrays grow four chunks at a
time ahead of the marker; ``close()`` trims them to it. A writer killed at any point leaves
every committed flush readable. On a local disk the chunk files are written directly
(:mod:`chunkfile`); elsewhere through zarr.
"""

from __future__ import annotations

import contextlib
import json
import math
import operator
import sys
import uuid
import warnings
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import zarr

from attnres_probe.store import chunkfile
from attnres_probe.store.header import (
    open_group,
    read_header,
    refuse_live,
    writer_alive,
    writer_identity,
)
from attnres_probe.store.location import Location, locate
from attnres_probe.store.repair import repair
from attnres_probe.store.replace import beside, claim, clear_leftovers, discard, put_in_place
from attnres_probe.store.schema import (
    CHUNK_KEYS,
    CHUNK_MAX_BYTES,
    CHUNK_TARGET_STEPS,
    RECORDING_KEY,
    ROLE_KEY,
    SCHEMA_VERSION,
    STEP,
    WRITER_KEY,
    RunNotFoundError,
    RunStoreError,
    RunStoreWarning,
    compressors,
    dims_of,
    role,
    run_error,
    variable_attrs,
)
from attnres_probe.store.statics import (
    check_name,
    jsonable,
    normalise_coords,
    write_statics,
    write_whole,
)


def chunk_length(flush_every: int, row_bytes: int = 0) -> int:
    """Steps per chunk: a multiple of ``flush_every`` near 256 steps, at most ~16 MiB of the
    widest variable (``row_bytes`` per step) unless one flush alone is larger."""
    per = max(1, math.ceil(CHUNK_TARGET_STEPS / flush_every))
    if row_bytes:
        per = min(per, max(1, CHUNK_MAX_BYTES // (row_bytes * flush_every)))
    return flush_every * per


def versions() -> dict[str, str]:
    """Python's version and those of the installed packages that shape a recording
    (transformers too when it is loaded: the model may come from there)."""
    found = {"python": ".".join(map(str, sys.version_info[:3]))}
    packages = ["attnres-probe", "torch", "numpy", "zarr", "xarray"]
    if "transformers" in sys.modules:
        packages.append("transformers")
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


class RunWriter:
    """Appends recorded steps to a run, buffering in RAM and committing one flush at a time.

    variables: {name: dims} with dims starting at 'step', e.g. ``{"hidden_rms": ("step",
    "sublayer")}``; every other dim needs a coordinate in ``coords`` (for its length).
    coords: {name: values} for a dimension coordinate, {name: (dim, values)} for one along
    another dim (``"kind": ("sublayer", [...])``); :func:`schema_coords` builds the schema's.
    attrs: root attributes (model_config, residual, n_layers, run_name, ...); the writer sets
    schema_version, status, n_steps and recording_id (new for each recording made), and
    versions / run_name when not given.
    mode: "w" replaces an existing recording (on a local disk atomically for readers: the new
    one is built beside it and swapped in, see :mod:`replace`), "w-" refuses to, "a" resumes
    after the last committed step (same variables). storage_options: for fsspec URLs.

    Steps are integers from 0, strictly increasing. Values are stored as float32; a variable
    missing from a step is NaN; NaN/Inf are kept. One process writes a run; a second writer on
    a live run is refused, also when both are created at the same instant.
    """

    def __init__(
        self,
        path: Any,
        variables: Mapping[str, Collection[str]],
        coords: Mapping[str, Any] | None = None,
        attrs: Mapping[str, Any] | None = None,
        flush_every: int = 64,
        storage_options: Mapping[str, Any] | None = None,
        mode: str = "w",
        chunk_steps: int | None = None,
    ) -> None:
        if isinstance(flush_every, bool) or not isinstance(flush_every, int) or flush_every < 1:
            raise RunStoreError(f"flush_every={flush_every!r} must be a positive integer")
        if mode not in ("w", "w-", "a"):
            raise RunStoreError(f"mode={mode!r} is not a write mode; use 'w', 'w-' or 'a'")
        self._loc = Location.of(path, storage_options)
        self.flush_every = flush_every
        self._variables = {name: tuple(dims) for name, dims in variables.items()}
        self._coords = normalise_coords(coords)
        self._sizes = self._check_schema()
        self._attrs = jsonable(attrs or {})
        widest = max(
            (math.prod(self._sizes[d] for d in dims[1:]) for dims in self._variables.values()),
            default=1,
        )
        self.chunk_steps = chunk_steps or chunk_length(flush_every, 4 * widest)
        self._closed = False
        self._last_step: int | None = None  # the last step appended (buffered or committed)
        self._pool = ThreadPoolExecutor(max_workers=min(16, len(self._variables) + 1))
        # On a local disk one writer at a time checks the run and puts its recording in
        # place; elsewhere there are no locks (one process writes a run, as documented).
        lock = claim(self._loc) if self._loc.fs is None else contextlib.nullcontext()
        try:
            with lock:
                self._open(mode)
        except BaseException:
            self._pool.shutdown(wait=False)
            raise

    # -- set-up

    def _check_schema(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for name, (dims, data) in self._coords.items():
            for d, n in zip(dims, data.shape, strict=True):
                if sizes.setdefault(d, n) != n:
                    raise RunStoreError(
                        f"coordinate {name!r} has {n} entries along {d!r} but another has "
                        f"{sizes[d]}; make them equal"
                    )
        for name, dims in self._variables.items():
            check_name(name, "variable")
            if name in self._coords or name == STEP:
                raise RunStoreError(f"variable {name!r} has the name of a coordinate; rename it")
            if not dims or dims[0] != STEP or STEP in dims[1:] or len(set(dims)) != len(dims):
                raise RunStoreError(
                    f"variable {name!r} has dims {dims}; per-step variables have 'step' first "
                    "and once (store the others with write_static)"
                )
            for d in dims[1:]:
                if d not in sizes:
                    raise RunStoreError(
                        f"variable {name!r}: dim {d!r} has no coordinate, so its length is "
                        f"unknown; pass coords={{{d!r}: values}}"
                    )
        return sizes

    def _open(self, mode: str) -> None:
        """Create, replace or resume the recording (under the creation lock on a local disk)."""
        exists = self._loc.exists(self._loc.key("zarr.json"))
        if exists and mode == "w-":
            raise run_error(
                self._loc.shown, "it already has a recording", "pick a new path or mode='w'"
            )
        if mode == "a" and exists:
            self._resume()
        else:
            self._create(exists)

    def _cannot_create(self, err: Exception) -> RunStoreError:
        return run_error(
            self._loc.shown,
            f"cannot create its store ({type(err).__name__}: {err})",
            "check the path is writable",
        )

    def _create(self, exists: bool) -> None:
        """A new recording; on a local disk built beside the store and put in place whole, so
        a reader never sees it half-made nor mixed with the recording it replaces."""
        loc = self._loc
        if exists:
            try:
                header = read_header(loc)
            except RunStoreError:
                header = {}  # a damaged recording is simply replaced
            refuse_live(loc, header, "replacing its recording")
        named = loc.store if loc.shown.rstrip("/").endswith(".zarr") else loc.run_dir
        run_name = named.rstrip("/").rsplit("/", 1)[-1].removesuffix(".zarr")
        attrs = {"run_name": run_name, "versions": json.dumps(versions()), **self._attrs}
        attrs.update(schema_version=SCHEMA_VERSION, status="running", n_steps=0)
        attrs.setdefault(RECORDING_KEY, uuid.uuid4().hex)  # a caller may name it (train)
        attrs[WRITER_KEY] = writer_identity()
        self._attrs = attrs
        if loc.fs is not None:
            self._build(loc)
        else:
            clear_leftovers(loc)
            built = beside(loc, "new")
            try:
                self._build(loc.bare(built))
                put_in_place(built, loc.store)
            except BaseException as err:
                discard(built)
                if isinstance(err, OSError):
                    raise self._cannot_create(err) from err
                raise
            self._group = open_group(loc, "r+")
            self._arrays = {
                name: self._group[name].with_config({"write_empty_chunks": True})
                for name in self._arrays
            }
        self._n = self._capacity = self._chunk_start = 0
        self._direct = all(chunkfile.plain_layout(loc, a) for a in self._arrays.values())
        self._reset_buffers()

    def _build(self, where: Location) -> None:
        """The root group (attributes included: never seen without them), the coordinates and
        the empty step arrays, at ``where``."""
        try:
            store = where.zarr_store(read_only=False)
            self._group = zarr.open_group(
                store, mode="w", zarr_format=3, attributes=dict(self._attrs)
            )
        except Exception as err:  # noqa: BLE001 - any filesystem's failure, one clear error
            raise self._cannot_create(err) from err
        for name, (dims, data) in self._coords.items():
            write_whole(self._group, name, data, dims, {ROLE_KEY: "coordinate"})
        self._arrays = {STEP: self._step_array(STEP, (STEP,), np.int64, -1, "coordinate")}
        for name, dims in self._variables.items():
            self._arrays[name] = self._step_array(name, dims, np.float32, np.nan, "variable")

    def _step_array(self, name: str, dims, dtype, fill, array_role: str):
        shape = tuple(self._sizes[d] for d in dims[1:])
        attrs: dict[str, Any] = {ROLE_KEY: array_role, **variable_attrs(name)}
        non_dim = [c for c, (cd, _) in self._coords.items() if c not in cd and set(cd) <= set(dims)]
        if non_dim:  # plain xarray then sees kind / layer_of as coordinates too
            attrs["coordinates"] = " ".join(non_dim)
        return self._group.create_array(
            name,
            shape=(0, *shape),
            chunks=(self.chunk_steps, *shape),
            dtype=dtype,
            fill_value=fill,
            dimension_names=dims,
            attributes=attrs,
            compressors=compressors(),
            chunk_key_encoding=CHUNK_KEYS,
            config={"write_empty_chunks": True},  # every chunk exists, so a lost one is noticed
        )

    def _resume(self) -> None:
        loc = self._loc
        refuse_live(loc, read_header(loc), "resuming it")
        repair(loc.shown, storage_options=loc.storage_options, force=True)
        attrs = read_header(loc)
        self._group = open_group(loc, "r+")
        self._n = attrs["n_steps"]
        self._arrays = {}
        for name in (STEP, *self._variables):
            want = (STEP,) if name == STEP else self._variables[name]
            try:
                arr = self._group[name].with_config({"write_empty_chunks": True})
            except KeyError:
                if name == STEP:
                    raise run_error(
                        loc.shown, "it has no step coordinate", "record a new run"
                    ) from None
                arr = self._step_array(name, want, np.float32, np.nan, "variable")
                arr.resize((self._n, *arr.shape[1:]))
                if self._n:
                    arr[: self._n] = np.nan
            if dims_of(arr) != want:
                raise run_error(
                    loc.shown,
                    f"its {name!r} has dims {dims_of(arr)}, not {want}",
                    "resume with the same variables",
                )
            self._arrays[name] = arr
        lengths = {a.chunks[0] for a in self._arrays.values()}
        if len(lengths) != 1:
            raise run_error(
                loc.shown,
                f"its step arrays have chunk lengths {sorted(lengths)}",
                "record a new run",
            )
        self.chunk_steps = lengths.pop()
        self._direct = all(chunkfile.plain_layout(loc, a) for a in self._arrays.values())
        self._capacity = min(a.shape[0] for a in self._arrays.values())
        self._chunk_start = (self._n // self.chunk_steps) * self.chunk_steps
        self._reset_buffers()
        self._filled = self._n - self._chunk_start
        if self._filled:
            for name, arr in self._arrays.items():
                self._buffers[name][: self._filled] = arr[self._chunk_start : self._n]
        if self._n:
            self._last_step = int(self._arrays[STEP][self._n - 1])
        kept = {k: attrs[k] for k in (RECORDING_KEY,) if k in attrs}  # still the same recording
        attrs.update(self._attrs)
        attrs.update(status="running", **kept)
        attrs[WRITER_KEY] = writer_identity()
        self._attrs = attrs
        self._group.attrs.put(dict(attrs))

    def _reset_buffers(self) -> None:
        self._buffers = {
            name: np.full((self.chunk_steps, *arr.shape[1:]), arr.fill_value, dtype=arr.dtype)
            for name, arr in self._arrays.items()
        }
        self._filled = 0
        self._pending = 0  # buffered steps not committed yet
        self._since_try = 0

    # -- recording

    @property
    def path(self) -> str:
        """The run directory (or store) being written."""
        return self._loc.run_dir

    @property
    def n_steps(self) -> int:
        """Steps committed so far (buffered steps not included)."""
        return self._n

    def append(self, step: int, values: Mapping[str, Any]) -> None:
        """Buffer one recorded step; each value shaped like its variable's dims after 'step'.

        No I/O, except every ``flush_every`` steps when the buffer is flushed. After a failed
        flush the steps stay buffered and the next try comes ``flush_every`` steps later (not at
        every step); once a whole chunk is buffered unwritten, further steps are refused.
        """
        if self._closed:
            raise run_error(self._loc.shown, "append() after close()", "open a new RunWriter")
        step = self._check_step(step)
        if self._filled == self.chunk_steps:  # a full chunk whose flush failed: retry first
            self._since_try += 1
            if self._since_try < self.flush_every:
                raise run_error(
                    self._loc.shown,
                    f"step {step} dropped: the buffer holds a whole chunk of steps whose flush "
                    "failed",
                    "every earlier flush is kept; check the disk or filesystem",
                )
            self.flush()
        checked = []  # every value is checked before any is buffered
        for name, value in values.items():
            target = self._buffers.get(name)
            if target is None or name == STEP:
                raise RunStoreError(
                    f"append(): {name!r} is not a variable of this run; its variables: "
                    + ", ".join(sorted(self._variables))
                )
            value = np.asarray(value, dtype=np.float32)
            if value.shape != target.shape[1:]:
                raise RunStoreError(
                    f"append(): {name!r} has shape {value.shape}, expected {target.shape[1:]} "
                    f"for dims {self._variables[name][1:]}"
                )
            checked.append((target, value))
        row = self._filled
        for target, value in checked:
            target[row] = value
        self._buffers[STEP][row] = step
        self._last_step = step
        self._filled += 1
        self._pending += 1
        self._since_try += 1
        if self._since_try >= self.flush_every or self._filled == self.chunk_steps:
            self.flush()

    def _check_step(self, step: Any) -> int:
        """``step`` as an int when it is a step number after the last one appended."""
        try:
            if isinstance(step, bool):
                raise TypeError
            step = operator.index(step)
        except TypeError:
            raise run_error(
                self._loc.shown, f"step {step!r} is not an integer", "pass the step number"
            ) from None
        if step < 0:
            raise run_error(self._loc.shown, f"step {step} is negative", "count steps from 0")
        if step > np.iinfo(np.int64).max:
            raise run_error(self._loc.shown, f"step {step} is too large", "store steps < 2**63")
        if self._last_step is not None and step <= self._last_step:
            raise run_error(
                self._loc.shown,
                f"step {step} does not follow step {self._last_step}, the last one appended",
                "append each step once, in increasing order",
            )
        return step

    def flush(self) -> None:
        """Write the buffered steps (the current chunk of every array), then commit them."""
        if self._pending == 0 or self._closed:
            return
        self._since_try = 0  # steps appended since the last flush tried to write
        start, end = self._chunk_start, self._chunk_start + self.chunk_steps
        n = start + self._filled
        try:
            if end > self._capacity:  # grow 4 chunks ahead: one metadata write per array
                grown = start + 4 * self.chunk_steps
                self._each(lambda _, a: a.resize((grown, *a.shape[1:])))
                self._capacity = grown
            self._each(self._write_chunk)
            self._commit(n_steps=n)
        except Exception as err:  # noqa: BLE001 - any filesystem's failure, one clear error
            raise run_error(
                self._loc.shown,
                f"writing steps {self._n}–{n - 1} failed ({type(err).__name__}: {err})",
                "every earlier flush is kept; check the disk or filesystem",
            ) from err
        self._n = n
        self._pending = 0
        if self._filled == self.chunk_steps:
            self._chunk_start = end
            self._reset_buffers()

    def _write_chunk(self, name: str, arr) -> None:
        """Rewrite the current chunk of one array whole from the buffer (never a read)."""
        index = self._chunk_start // self.chunk_steps
        if self._direct:
            path = chunkfile.chunk_path(self._loc, name, arr, index)
            chunkfile.write(path, chunkfile.encode(self._buffers[name]))
        else:
            arr[self._chunk_start : self._chunk_start + self.chunk_steps] = self._buffers[name]

    def _each(self, fn: Callable) -> None:
        """``fn(name, array)`` for every array in parallel; raises the first failure only once
        every call has ended, so no write of a failed flush is still running when the next
        flush rewrites the same chunks."""
        futures = [self._pool.submit(fn, name, a) for name, a in self._arrays.items()]
        wait(futures)
        for future in futures:
            future.result()

    def _commit(self, **changes: Any) -> None:
        self._attrs.update(changes)
        self._group.attrs.put(dict(self._attrs))  # zarr keeps the dict it is given

    def write_static(
        self,
        name: str,
        dims: Collection[str],
        array: Any,
        coords: Mapping[str, Any] | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        """Store a variable without a step dim (e.g. pruning results on ``("unit",)``), with
        coordinates for its dims if wanted; it replaces a static variable of that name."""
        if self._closed:
            raise run_error(
                self._loc.shown, "write_static() after close()", "use write_static_variables"
            )
        taken = set(self._arrays) | set(self._coords)
        write_statics(self._group, {name: (dims, array)}, coords, attrs, self._sizes, taken)
        for cdims, data in normalise_coords(coords).values():
            self._sizes.update(zip(cdims, data.shape, strict=True))
        self._commit(static_revision=int(self._attrs.get("static_revision", 0)) + 1)

    def close(self, status: str = "finished") -> None:
        """Flush, trim the arrays to the committed steps and record ``status``."""
        if self._closed:
            return
        try:
            self.flush()
            if self._capacity != self._n:
                n = self._n
                self._each(lambda _, a: a.resize((n, *a.shape[1:])))
                self._capacity = n
            self._attrs.pop(WRITER_KEY, None)
            self._commit(status=status)
        finally:
            self._closed = True
            self._pool.shutdown(wait=True)

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # keep what was recorded without hiding the error that ended the run
            self.close(status="interrupted")
        except Exception as err:  # noqa: BLE001
            warnings.warn(
                f"run {self._loc.shown}: the last steps could not be flushed ({err})",
                RunStoreWarning,
                stacklevel=2,
            )


def write_static_variables(
    path: Any,
    arrays: Mapping[str, tuple[Collection[str], Any]],
    attrs: Mapping[str, Any] | None = None,
    coords: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Write variables without a step dim into a run: ``arrays`` maps name -> (dims,
    values), ``attrs`` go on each of them, stored variables of the same names are replaced.
    A run directory without a recording (trained with the probe off) gets a new store."""
    try:
        loc = locate(path, storage_options)
    except RunNotFoundError:
        loc = Location.of(path, storage_options)
        if loc.shown.rstrip("/").endswith(".zarr") or not loc.is_dir(loc.run_dir):
            raise
        RunWriter(path, {}, storage_options=storage_options).close()
    header = read_header(loc)
    loc.check_writable()  # before the first write: none fails midway
    group = open_group(loc, "r+")
    sizes, taken = {}, set()
    for name in loc.children():
        try:
            arr = group[name]
        except Exception:  # noqa: BLE001 - an unreadable array is replaced or left alone
            continue
        dims = dims_of(arr) if isinstance(arr, zarr.Array) else None
        if dims is None:
            continue
        if dims[:1] == (STEP,):
            taken.add(name)
        elif role(arr) == "coordinate" and name not in (coords or {}):
            sizes.update(zip(dims, arr.shape, strict=True))
            taken.add(name)
    write_statics(group, arrays, coords, attrs, sizes, taken)
    if not writer_alive(loc, header):  # a live writer's next commit announces the change
        header["static_revision"] = int(header.get("static_revision", 0)) + 1
        group.attrs.put(dict(header))
