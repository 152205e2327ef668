"""Listing the runs under a root without loading them: :func:`list_runs`, :func:`run_info`."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import fsspec

from attnres_probe.store.header import effective_status, open_group, read_header
from attnres_probe.store.location import is_url, locate
from attnres_probe.store.schema import STEP, STORE_NAME, RunNotFoundError, RunStoreError


@dataclass(frozen=True)
class RunInfo:
    """One run as :func:`list_runs` sees it (cheap: the root metadata and the last step)."""

    name: str  # path relative to the listed root, posix form ('.' for the root itself)
    path: str  # the run directory (or bare store)
    status: str  # live, finished, interrupted (writer stopped without closing) or broken
    residual: str | None = None
    n_layers: int | None = None
    n_steps: int = 0
    last_step: int | None = None
    last_loss: float | None = None
    updated: float | None = None  # unix time of the last commit, when the filesystem says
    error: str = ""  # why a broken run cannot be read


def run_info(
    path: Any, name: str | None = None, storage_options: Mapping[str, Any] | None = None
) -> RunInfo:
    """The :class:`RunInfo` of one run; a run that cannot be read is 'broken', never raised."""
    shown = os.fspath(path)
    name = shown if name is None else name
    try:
        loc = locate(path, storage_options)
        header = read_header(loc)
    except RunStoreError as err:
        return RunInfo(name=name, path=shown, status="broken", error=str(err))
    except Exception as err:  # noqa: BLE001 - a listing survives any one run
        return RunInfo(name=name, path=shown, status="broken", error=f"{type(err).__name__}: {err}")
    n = header["n_steps"]
    last_step = last_loss = None
    if n:
        with contextlib.suppress(Exception):  # damaged data shows when the run is opened
            group = open_group(loc, "r")
            last_step = int(group[STEP][n - 1])
            loss = float(group["loss"][n - 1])
            last_loss = loss if math.isfinite(loss) else None
    status = effective_status(loc, header)
    n_layers = header.get("n_layers")
    return RunInfo(
        name=name,
        path=shown,
        status="live" if status == "running" else status,
        residual=header.get("residual"),
        n_layers=n_layers if isinstance(n_layers, int) else None,
        n_steps=n,
        last_step=last_step,
        last_loss=last_loss,
        updated=loc.mtime("zarr.json"),
    )


def _local_runs(root: str) -> Iterator[str]:
    """Run directories (holding recording.zarr) and bare ``*.zarr`` stores below ``root``."""
    for dirpath, dirnames, _ in os.walk(root):
        if STORE_NAME in dirnames:
            yield dirpath
            dirnames[:] = []
            continue
        keep = []
        for d in sorted(dirnames):
            if d.endswith(".zarr"):
                yield os.path.join(dirpath, d)
            elif not d.startswith("."):
                keep.append(d)
        dirnames[:] = keep


def _remote_runs(fs, base: str) -> Iterator[str]:
    found = set()
    for p in fs.find(base, withdirs=True):
        p = p.rstrip("/")
        if p.endswith(f"/{STORE_NAME}"):
            found.add(p[: -len(STORE_NAME) - 1])
        elif p.endswith(".zarr") and not any(part.endswith(".zarr") for part in p.split("/")[:-1]):
            found.add(p)
    yield from sorted(found)


def list_runs(root: Any, storage_options: Mapping[str, Any] | None = None) -> list[RunInfo]:
    """Every run below ``root`` (a local directory or fsspec URL), sorted by name. A run that
    cannot be read is listed as 'broken' with the reason: one bad run never hides the others."""
    text = os.fspath(root)
    if is_url(text):
        fs, base = fsspec.core.url_to_fs(text, **dict(storage_options or {}))
        base = base.rstrip("/")
        runs = [
            run_info(fs.unstrip_protocol(p), p[len(base) :].strip("/") or ".", storage_options)
            for p in _remote_runs(fs, base)
        ]
    else:
        text = text[len("file://") :] if text.startswith("file://") else text
        if not os.path.isdir(text):
            raise RunNotFoundError(f"runs root {text} is not a directory; pass the folder of runs")
        runs = [
            run_info(p, os.path.relpath(p, text).replace(os.sep, "/"), storage_options)
            for p in _local_runs(text)
        ]
    return sorted(runs, key=lambda r: r.name)
