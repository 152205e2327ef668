"""Putting a recording in place on a local disk: one writer at a time, atomically for readers.

A writer builds a new recording in a hidden folder beside the store and moves it in by rename.
Replacing an existing recording exchanges the two folders in one ``renameat2(RENAME_EXCHANGE)``
call (Linux), so a reader finds the old recording or the new one at the path, never a mix;
where the system cannot exchange, the old one is renamed away just before the new one is
renamed in, and a reader may find the run missing for that instant. The old recording is then
deleted. Creation is serialised by an advisory lock (``flock``) on a lock file beside the store,
held only while a writer checks the run and puts its recording in place: the process that comes
second finds the first one's live recording and is refused, never zarr's own errors.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from attnres_probe.store.header import read_header, refuse_live
from attnres_probe.store.location import Location, locate
from attnres_probe.store.schema import RunStoreError, run_error

try:  # advisory locks exist on POSIX systems only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_WAIT_S = 30.0  # a writer puts its recording in place within milliseconds
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_libc = None


def _lock_path(loc: Location) -> str:
    parent, name = os.path.split(loc.store)
    return os.path.join(parent, f".{name}.lock")


def beside(loc: Location, tag: str) -> str:
    """A fresh hidden path beside the store (never listed as a run: it does not end in .zarr)."""
    parent, name = os.path.split(loc.store)
    return os.path.join(parent, f".{name}.{uuid.uuid4().hex[:12]}.{tag}")


@contextlib.contextmanager
def claim(loc: Location) -> Iterator[None]:
    """Hold the run's creation lock (creating the run's folder if needed). The lock file is
    removed on release; a waiter that locked a removed file tries again."""
    path = _lock_path(loc)
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise run_error(
                loc.shown,
                f"cannot be written ({type(err).__name__}: {err})",
                "check the path is writable",
            ) from err
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if fcntl is None or os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise run_error(
                    loc.shown,
                    f"another writer has been creating it for over {LOCK_WAIT_S:.0f} s",
                    f"stop that writer, or remove {path} if no writer is left",
                ) from None
            time.sleep(0.005)
        except FileNotFoundError:
            pass  # the holder removed the file we locked: lock the new one
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):
                os.close(fd)
                raise
            break  # a filesystem without locks: one writer at a time, as with fsspec stores
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _exchange(a: str, b: str) -> bool:
    """Swap folders ``a`` and ``b`` in one step; False where the system cannot."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p] * 2 + [ctypes.c_uint]
        except (OSError, AttributeError):
            _libc = False
    if not _libc:
        return False
    done = _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if done == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), b)


def put_in_place(built: str, store: str) -> None:
    """Move the recording built at ``built`` to ``store``; an existing recording there is
    exchanged with it in one step where possible, then deleted."""
    if not os.path.lexists(store):
        os.rename(built, store)
        return
    if not _exchange(built, store):
        aside = f"{built}.old"
        os.rename(store, aside)
        try:
            os.rename(built, store)
        except OSError:
            os.rename(aside, store)  # the old recording back in place
            raise
        built = aside
    shutil.rmtree(built, ignore_errors=True)  # the old recording


def clear_leftovers(loc: Location) -> None:
    """Remove recordings a killed writer left half-built or half-replaced beside the store.
    Called under the creation lock, so none of them belongs to a writer still at work."""
    parent, name = os.path.split(loc.store)
    with contextlib.suppress(OSError), os.scandir(parent or ".") as entries:
        for entry in entries:
            if entry.name.startswith(f".{name}.") and entry.name.endswith((".new", ".new.old")):
                shutil.rmtree(entry.path, ignore_errors=True)


def discard(built: str) -> None:
    """Remove a recording that was being built and will not be put in place."""
    shutil.rmtree(built, ignore_errors=True)


def move_run_aside(path: Any, storage_options: Mapping[str, Any] | None = None) -> str:
    """Move the run at ``path`` — its whole folder: recording, checkpoint, configuration — to a
    hidden folder beside it in one rename, so a new run can be made at ``path`` with nothing of
    the old one left there; returns where it went (delete it with ``shutil.rmtree`` once the
    new run is made). Readers see the old run, then no run, never a mix.

    Refuses (RunStoreError) a run whose writer is alive, and fsspec URLs.
    """
    loc = locate(path, storage_options)
    if loc.fs is not None:
        raise run_error(loc.shown, "it is not on a local disk", "delete it with its filesystem")
    target = loc.store if loc.shown.rstrip("/").endswith(".zarr") else loc.run_dir
    parent, name = os.path.split(os.path.abspath(target))
    aside = os.path.join(parent, f".{name}.replaced-{uuid.uuid4().hex[:12]}")
    with claim(loc):
        try:
            header = read_header(loc)
        except RunStoreError:
            header = {}  # a damaged recording is moved aside all the same
        refuse_live(loc, header, "replacing it")
        try:
            os.rename(target, aside)
        except OSError as err:
            raise run_error(
                loc.shown, f"cannot be moved aside ({err.strerror or err})", "check it is writable"
            ) from None
    return aside
