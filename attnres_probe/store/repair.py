"""Repairing a run a killed writer left behind: arrays trimmed to the commit marker, temp
files removed, status 'interrupted' — after which plain ``xr.open_zarr`` reads it too."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import zarr

from attnres_probe.store.damage import describe_spans, metadata_problem, missing_rows
from attnres_probe.store.header import open_group, read_header, refuse_live
from attnres_probe.store.location import Location, locate
from attnres_probe.store.schema import STEP, WRITER_KEY, RunStoreError, dims_of, run_error


@dataclass(frozen=True)
class RepairReport:
    """What :func:`repair` changed, and the damage it cannot undo."""

    run: str
    n_steps: int  # committed steps kept
    trimmed: dict[str, tuple[int, int]] = field(default_factory=dict)  # name: (old, new) length
    padded: dict[str, tuple[int, int]] = field(default_factory=dict)  # extended with NaN
    removed: tuple[str, ...] = ()  # leftover temp files deleted
    status: tuple[str, str] = ("", "")  # (before, after)
    problems: tuple[str, ...] = ()  # e.g. missing chunks (they read as NaN)

    @property
    def changed(self) -> bool:
        return bool(self.trimmed or self.padded or self.removed or self.status[0] != self.status[1])

    def __str__(self) -> str:
        parts = []
        if self.trimmed:
            trimmed = ", ".join(f"{k} {a}→{b}" for k, (a, b) in self.trimmed.items())
            parts.append(f"trimmed to the commit marker: {trimmed}")
        if self.padded:
            padded = ", ".join(f"{k} {a}→{b}" for k, (a, b) in self.padded.items())
            parts.append(f"padded with NaN: {padded}")
        if self.removed:
            parts.append(f"removed {len(self.removed)} temp file(s)")
        if self.status[0] != self.status[1]:
            parts.append(f"status {self.status[0]} → {self.status[1]}")
        parts.extend(f"cannot fix: {p}" for p in self.problems)
        return f"{self.n_steps} committed steps kept; " + ("; ".join(parts) or "nothing to repair")


def repair(
    path: Any, storage_options: Mapping[str, Any] | None = None, force: bool = False
) -> RepairReport:
    """Make a run left behind by a killed writer whole again: trim every per-step array to the
    commit marker (pad a shorter one with NaN), delete leftover ``*.partial`` temp files, and
    mark a 'running' run whose writer is gone 'interrupted'.

    Refuses (RunStoreError) while the run's writer is alive, unless ``force``, and with
    RunStoreError when the run cannot be written (e.g. read-only storage).
    """
    loc = locate(path, storage_options)
    try:
        return _repair(loc, force)
    except OSError as err:
        raise run_error(
            loc.shown,
            f"repairing it failed ({err.strerror or err})",
            "copy it somewhere writable to repair it, or open it without repair "
            "(reading needs none)",
        ) from err


def _repair(loc: Location, force: bool) -> RepairReport:
    header = read_header(loc)
    if not force:
        refuse_live(loc, header, "repairing it")
    loc.check_writable()
    group = open_group(loc, "r+")
    n = header["n_steps"]
    problems: list[str] = []
    step_arrays = {}
    for name in loc.children():
        try:
            arr = group[name]
        except Exception as err:  # noqa: BLE001
            problems.append(f"{name}: {metadata_problem(loc, name, err)}")
            continue
        dims = dims_of(arr) if isinstance(arr, zarr.Array) else None
        if dims and dims[:1] == (STEP,):
            step_arrays[name] = arr.with_config({"write_empty_chunks": True})
    if STEP in step_arrays:
        n = min(n, step_arrays[STEP].shape[0])  # steps without a label cannot be kept
    trimmed, padded = {}, {}
    for name, arr in step_arrays.items():
        length = arr.shape[0]
        if length > n:
            arr.resize((n, *arr.shape[1:]))
            trimmed[name] = (length, n)
        elif length < n:
            arr.resize((n, *arr.shape[1:]))
            arr[length:n] = arr.fill_value
            padded[name] = (length, n)
        try:
            missing = missing_rows(loc, name, arr, n)
        except RunStoreError as err:
            problems.append(f"{name}: {err}")
            continue
        if missing:
            spans = describe_spans(missing)
            problems.append(f"{name}: chunk(s) missing at step index {spans} (read as NaN)")
    removed = []
    for key in loc.temp_files():
        with contextlib.suppress(OSError):
            loc.remove(key)
            removed.append(key)
    before = str(header.get("status", ""))
    after = "interrupted" if before == "running" else before
    if n != header["n_steps"] or after != before:
        header.update(n_steps=n, status=after)
        header.pop(WRITER_KEY, None)
        group.attrs.put(dict(header))
    return RepairReport(
        run=loc.shown,
        n_steps=n,
        trimmed=trimmed,
        padded=padded,
        removed=tuple(removed),
        status=(before, after),
        problems=tuple(problems),
    )
