"""What is missing or unusable in a stored array, found and put in words for a note: the
chunk files a run's commit marker promises but the disk lacks, and why an array's metadata
cannot be opened. Shared by the reader (which reads around the damage) and repair (which
reports what it cannot fix)."""

from __future__ import annotations

import itertools
import json
import math

from attnres_probe.store.location import Location
from attnres_probe.store.schema import RunStoreError

MAX_CHUNKS = 200_000  # more chunks than this in one array means its metadata is damaged


def missing_rows(loc: Location, name: str, arr, rows: int) -> list[tuple[int, int]]:
    """Ranges [first, end) along the first dim whose chunk files are missing from array
    ``name`` (considering rows [0, rows) only; a 0-d array is one chunk)."""
    chunks = arr.chunks
    extent = (rows, *arr.shape[1:]) if arr.ndim else ()
    counts = [math.ceil(e / c) if c else 0 for e, c in zip(extent, chunks, strict=True)]
    if math.prod(counts) > MAX_CHUNKS:
        raise RunStoreError(f"{math.prod(counts)} chunks: its chunk metadata is damaged")
    present = loc.files(name)
    missing = set()
    for coords in itertools.product(*(range(c) for c in counts)):
        if arr.metadata.encode_chunk_key(coords) not in present:
            first = coords[0] * chunks[0] if coords else 0
            missing.add((first, min(first + chunks[0], rows) if coords else 0))
    return sorted(missing)


def describe_spans(spans: list[tuple[int, int]]) -> str:
    shown = [f"{a}–{b - 1}" if b - a > 1 else f"{a}" for a, b in spans[:4]]
    return ", ".join(shown) + (f" and {len(spans) - 4} more" if len(spans) > 4 else "")


def metadata_problem(loc: Location, name: str, err: Exception) -> str:
    """Why zarr could not open array ``name``: its zarr.json missing, not JSON, or not Zarr
    array metadata."""
    raw = loc.read(f"{name}/zarr.json")
    if raw is None:
        return "its zarr.json is missing"
    try:
        json.loads(raw)
    except ValueError:
        return "its zarr.json is not valid JSON (truncated or corrupt)"
    detail = str(err).splitlines()[0][:160] if str(err) else ""
    return f"its zarr.json is not usable array metadata ({type(err).__name__}: {detail})"
