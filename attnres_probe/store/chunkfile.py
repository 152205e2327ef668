"""Chunk files of the plain layout, read and written without zarr's per-chunk machinery.

Every array RunWriter creates is stored as whole-row chunks encoded by the Zarr v3 ``bytes``
codec (little-endian) followed by the ``crc32c`` codec (4-byte little-endian CRC32C of the
bytes). On a local disk such a chunk is one ``open``/``read`` or one atomic write away, which
is several times faster than going through zarr for the thousands of chunks of a long run.
Files written here are ordinary Zarr chunks; anything else is left to zarr.
"""

from __future__ import annotations

import contextlib
import math
import os
import uuid

import numpy as np
from google_crc32c import value as crc32c
from zarr.codecs import BytesCodec, Crc32cCodec
from zarr.codecs.bytes import Endian
from zarr.core.chunk_grids import RegularChunkGrid

from attnres_probe.store.location import TEMP_SUFFIX, Location


def plain_layout(loc: Location, arr) -> bool:
    """True for a local array of fixed-size numbers chunked in whole rows and encoded as
    little-endian bytes + CRC32C (how RunWriter stores every per-step array)."""
    if loc.fs is not None or arr.ndim == 0 or arr.dtype.kind not in "fiu":
        return False
    codecs = arr.metadata.codecs
    return (
        len(codecs) == 2
        and isinstance(codecs[0], BytesCodec)
        and codecs[0].endian in (Endian.little, None)
        and isinstance(codecs[1], Crc32cCodec)
        and isinstance(arr.metadata.chunk_grid, RegularChunkGrid)
        and tuple(arr.chunks[1:]) == tuple(arr.shape[1:])
    )


def chunk_path(loc: Location, name: str, arr, index: int) -> str:
    """The file of chunk ``index`` (along the first dim) of array ``name``."""
    key = arr.metadata.encode_chunk_key((index,) + (0,) * (arr.ndim - 1))
    return os.path.join(loc.store, name, key)


def encode(block: np.ndarray) -> bytes:
    """A full chunk as stored: its little-endian bytes, then their CRC32C."""
    body = np.ascontiguousarray(block, dtype=block.dtype.newbyteorder("<")).tobytes()
    return body + crc32c(body).to_bytes(4, "little")


def decode(raw: bytes, arr) -> np.ndarray | None:
    """The chunk ``raw`` of ``arr`` as an array [chunk rows, ...]; None when its size or
    checksum is wrong (a damaged file)."""
    dtype = np.dtype(arr.dtype).newbyteorder("<")
    count = arr.chunks[0] * math.prod(arr.shape[1:])
    if len(raw) != count * dtype.itemsize + 4:
        return None
    if crc32c(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
        return None
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(arr.chunks[0], *arr.shape[1:])


def write(path: str, data: bytes) -> None:
    """Write a file atomically: a temp file beside it, renamed over it (zarr's own way, with
    the same temp-file suffix, so a crash leaves a ``*.partial`` that repair removes)."""
    tmp = f"{path}.{uuid.uuid4().hex}{TEMP_SUFFIX}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
