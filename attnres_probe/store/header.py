"""The root ``zarr.json`` of a run: its attributes, the commit marker, and who writes it.

The root attributes carry the commit marker ``n_steps`` (rewritten atomically after each
flush's data) and, while a writer holds the run, ``writer`` = {host, pid, started}: a run
whose status is 'running' but whose writer is gone was interrupted (e.g. killed).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

import zarr

from attnres_probe.store.location import Location, locate
from attnres_probe.store.schema import (
    LIVE_WINDOW_S,
    MAX_STEPS,
    SCHEMA_VERSION,
    WRITER_KEY,
    RunStoreError,
    run_error,
)

_UNREADABLE = "the recording cannot be read; record the run again"


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_header(loc: Location, raw: bytes | None = None) -> dict[str, Any]:
    """The root attributes, validated: a known schema_version and a step count n_steps."""
    raw = loc.read("zarr.json") if raw is None else raw
    if raw is None:
        raise run_error(
            loc.shown,
            f"{loc.store}/zarr.json is missing (the store was never completed or was damaged)",
            _UNREADABLE,
        )
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise run_error(
            loc.shown,
            f"{loc.store}/zarr.json is not valid JSON, the file is truncated or corrupt ({err})",
            _UNREADABLE,
        ) from None
    if not isinstance(meta, dict) or meta.get("zarr_format") != 3:
        raise run_error(
            loc.shown,
            "its zarr.json does not describe a Zarr v3 store",
            "open runs written by attnres-probe",
        )
    attrs = meta.get("attributes")
    if (
        meta.get("node_type") != "group"
        or not isinstance(attrs, dict)
        or "schema_version" not in attrs
    ):
        raise run_error(
            loc.shown,
            "the store has no schema_version attribute, so attnres-probe did not write it",
            "record runs with attnres_probe.hooks.probe or store.RunWriter",
        )
    version = attrs["schema_version"]
    if not _count(version) or version < 1:
        raise run_error(
            loc.shown, f"schema_version={version!r} is not a version number", _UNREADABLE
        )
    if version > SCHEMA_VERSION:
        raise run_error(
            loc.shown,
            f"schema_version={version} was written by a newer attnres-probe "
            f"(this one reads up to {SCHEMA_VERSION})",
            "upgrade attnres-probe to read it",
        )
    n_steps = attrs.get("n_steps")
    if not _count(n_steps) or n_steps > MAX_STEPS:
        why = "is not a step count" if not _count(n_steps) else f"is over {MAX_STEPS:.0e} steps"
        raise run_error(
            loc.shown,
            f"its commit marker n_steps={n_steps!r} {why}",
            "the root zarr.json is damaged and the recording cannot be trusted; record it again",
        )
    return attrs


def writer_identity() -> dict[str, Any]:
    """The ``writer`` attribute of this process."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` runs on this host (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def writer_alive(loc: Location, attrs: Mapping[str, Any]) -> bool:
    """True when the run's writer still runs: its pid on this host, else a recent commit."""
    if attrs.get("status") != "running":
        return False
    writer = attrs.get(WRITER_KEY)
    if isinstance(writer, dict) and writer.get("host") == socket.gethostname():
        pid = writer.get("pid")
        return isinstance(pid, int) and pid_alive(pid)
    mtime = loc.mtime("zarr.json")
    return mtime is not None and time.time() - mtime <= LIVE_WINDOW_S


def effective_status(loc: Location, attrs: Mapping[str, Any]) -> str:
    """'running' (its writer is alive), 'finished', or 'interrupted' (stopped, not closed)."""
    status = str(attrs.get("status", "finished"))
    if status == "running" and not writer_alive(loc, attrs):
        return "interrupted"
    return status


def refuse_live(loc: Location, attrs: Mapping[str, Any], doing: str) -> None:
    """RunStoreError when a live writer holds the run (zarr has no locks: one writer only)."""
    if writer_alive(loc, attrs):
        w = attrs.get(WRITER_KEY) or {}
        raise run_error(
            loc.shown,
            f"it is being written by process {w.get('pid', '?')} on {w.get('host', '?')}, "
            f"so {doing} now would break it",
            "stop that writer first, or wait until it finishes",
        )


def live_writer(path: Any, storage_options: Mapping[str, Any] | None = None) -> dict | None:
    """The writer holding the run at ``path`` now — ``{"host", "pid", "started"}`` — or None
    when no writer is alive (a finished or interrupted run, or no readable run at all).

    A writer on this host counts while its process runs; one on another host while it has
    committed within the last two minutes."""
    try:
        loc = locate(path, storage_options)
        attrs = read_header(loc)
    except RunStoreError:
        return None
    if not writer_alive(loc, attrs):
        return None
    writer = attrs.get(WRITER_KEY)
    return dict(writer) if isinstance(writer, dict) else {}


def open_group(loc: Location, mode: str):
    """The run's root group, opened without consolidated metadata."""
    try:
        store = loc.zarr_store(read_only=mode == "r")
        return zarr.open_group(store, mode=mode, use_consolidated=False, zarr_format=3)
    except Exception as err:  # noqa: BLE001 - every zarr failure becomes one clear error
        raise run_error(
            loc.shown, f"zarr cannot open the store ({type(err).__name__}: {err})", _UNREADABLE
        ) from None
