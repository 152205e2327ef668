"""Listing the runs under a root without loading them: :func:`run_paths` finds them,
:func:`run_info` reads one run's header, :func:`list_runs` does both for every run.

Every face that lists runs (the dashboard, the claims table) walks a folder through
:func:`run_paths`, so a run is the same thing everywhere: a directory holding
``recording.zarr``, or a store named ``*.zarr``.
"""

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
from attnres_probe.store.schema import (
    STEP,
    STORE_NAME,
    ConfinementError,
    RunNotFoundError,
    RunStoreError,
)

UNREADABLE = ("broken", "refused")  # statuses of runs that cannot be opened


@dataclass(frozen=True)
class RunInfo:
    """One run as :func:`list_runs` sees it (cheap: the root metadata and the last step)."""

    name: str  # path relative to the listed root, posix form ('.' for the root itself)
    path: str  # the run directory (or bare store)
    # live; finished; interrupted (its writer stopped without closing); broken (cannot be
    # read, ``error`` says why); refused (a file resolves outside the confinement folder)
    status: str
    residual: str | None = None
    n_layers: int | None = None
    n_steps: int = 0
    last_step: int | None = None
    last_loss: float | None = None
    updated: float | None = None  # unix time of the last commit, when the filesystem says
    error: str = ""  # why a broken or refused run cannot be read

    @property
    def readable(self) -> bool:
        """True when the run can be opened (live, finished or interrupted)."""
        return self.status not in UNREADABLE


def run_info(
    path: Any,
    name: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    confine: Any = None,
) -> RunInfo:
    """The :class:`RunInfo` of one run; a run that cannot be read is 'broken', one with a file
    resolving outside the local folder ``confine`` 'refused' — never raised."""
    shown = os.fspath(path)
    name = shown if name is None else name
    try:
        loc = locate(path, storage_options, confine)
        loc.check_confined()
        header = read_header(loc)
    except ConfinementError as err:
        return RunInfo(name=name, path=shown, status="refused", error=str(err))
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


def is_run(path: str) -> bool:
    """True for a local run: a directory holding ``recording.zarr``, or a ``*.zarr`` store."""
    if path.rstrip(os.sep).endswith(".zarr"):
        return os.path.isdir(path)
    return os.path.isdir(os.path.join(path, STORE_NAME))


def _local_runs(root: str) -> Iterator[str]:
    """Runs at or below ``root``. A symlink to a run is listed (a reader confined to ``root``
    decides whether it may be read); a symlinked folder is never descended into."""
    if is_run(root):
        yield root
        return
    for dirpath, dirnames, _ in os.walk(root):
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            child = os.path.join(dirpath, d)
            if is_run(child):
                yield child
            elif not os.path.islink(child):
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


def run_paths(root: Any, storage_options: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Every run at or below ``root`` (a local directory or fsspec URL) by name — its path
    relative to ``root`` in posix form, '.' for ``root`` itself — sorted; nothing is read.
    RunNotFoundError when a local ``root`` is not a directory."""
    text = os.fspath(root)
    if is_url(text):
        fs, base = fsspec.core.url_to_fs(text, **dict(storage_options or {}))
        base = base.rstrip("/")
        found = {
            p[len(base) :].strip("/") or ".": fs.unstrip_protocol(p) for p in _remote_runs(fs, base)
        }
    else:
        text = text[len("file://") :] if text.startswith("file://") else text
        if not os.path.isdir(text):
            raise RunNotFoundError(f"runs root {text} is not a directory; pass the folder of runs")
        found = {os.path.relpath(p, text).replace(os.sep, "/"): p for p in _local_runs(text)}
    return dict(sorted(found.items()))


def list_runs(
    root: Any, storage_options: Mapping[str, Any] | None = None, confine: Any = None
) -> list[RunInfo]:
    """The :class:`RunInfo` of every run below ``root`` (see :func:`run_paths`), sorted by
    name. A run that cannot be read is listed as 'broken' with the reason, one with a file
    outside ``confine`` as 'refused': one bad run never hides the others."""
    return [
        run_info(path, name, storage_options, confine)
        for name, path in run_paths(root, storage_options).items()
    ]
