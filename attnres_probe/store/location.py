"""Where a run lives: its directory and its Zarr store, on the local disk or at an fsspec URL.

The few file operations the store needs beyond zarr (existence, raw bytes of ``zarr.json``,
listings for chunk checks, temp-file clean-up, modification times) on either kind of place.

A local run may be *confined* to a folder (a dashboard's ROOT): then no file of its store is
read whose path resolves, symlinks followed, outside that folder. A reader refuses such a run
whole (:meth:`Location.check_confined`, :class:`ConfinementError`) before it reads any data,
and each later read checks its own file again.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec
import zarr

from attnres_probe.store.schema import (
    STORE_NAME,
    ConfinementError,
    RunNotFoundError,
    RunStoreError,
)

TEMP_SUFFIX = ".partial"  # zarr's LocalStore writes FILE.<uuid>.partial, then renames it


def is_url(text: str) -> bool:
    return "://" in text and not text.startswith("file://")


def within(path: str, folder: str) -> bool:
    """True when ``path`` is ``folder`` or below it (both resolved, absolute)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


@dataclass(frozen=True)
class Location:
    """A run: ``run_dir`` holds ``store`` (or ``store`` is a bare ``*.zarr`` given directly).
    Both are local paths, or URLs with ``fs`` the fsspec filesystem serving them."""

    shown: str  # the run as the caller named it, for messages
    run_dir: str
    store: str
    fs: Any = None
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    confine: str | None = None  # a resolved local folder no file read may resolve outside

    @staticmethod
    def of(
        path: Any, storage_options: Mapping[str, Any] | None = None, confine: Any = None
    ) -> Location:
        """Where ``path`` (a run directory or a ``.zarr`` store) puts its store; ``confine``:
        the local folder every file read for it must resolve inside (None: anywhere)."""
        shown = os.fspath(path)
        text = shown[len("file://") :] if shown.startswith("file://") else shown
        options = dict(storage_options or {})
        fs = None
        if is_url(text):
            fs, _ = fsspec.core.url_to_fs(text, **options)
        if confine is not None:
            if fs is not None:
                raise RunStoreError(
                    f"run {shown}: confine= applies to runs on the local disk, not to URLs; "
                    "leave it out for a remote run"
                )
            confine = os.path.realpath(os.fspath(confine))
        text = text.rstrip("/") or "/"
        if text.endswith(".zarr"):
            parent = text.rsplit("/", 1)[0] if "/" in text else "."
            return Location(shown, parent, text, fs, options, confine)
        return Location(shown, text, f"{text}/{STORE_NAME}", fs, options, confine)

    def bare(self, store: str) -> Location:
        """The same run with its store at ``store`` (a bare store not named ``*.zarr``)."""
        return Location(
            self.shown, self.run_dir, store, self.fs, self.storage_options, self.confine
        )

    # -- confinement

    def inside(self, target: str) -> str:
        """``target``, once it resolves (symlinks followed) inside ``confine``; else
        ConfinementError. Without ``confine``, ``target`` unchecked."""
        if self.confine is not None and not within(os.path.realpath(target), self.confine):
            shown = os.path.relpath(target, self.run_dir) if target != self.run_dir else "it"
            raise ConfinementError(
                f"run {self.shown}: {shown} resolves outside {self.confine} (a symlink); "
                "files outside that folder are never read: put the run's own files there"
            )
        return target

    def check_confined(self) -> None:
        """ConfinementError when the store, or any file or folder in it, resolves outside
        ``confine`` (symlinked folders that stay inside are checked through)."""
        if self.confine is None:
            return
        self.inside(self.run_dir)
        self.inside(self.store)
        seen, todo = set(), [self.store]
        while todo:
            folder = todo.pop()
            real = os.path.realpath(folder)
            if real in seen:  # a symlink loop inside the folder
                continue
            seen.add(real)
            try:
                entries = list(os.scandir(folder))
            except OSError:  # not listable: reading it fails later with its own error
                continue
            for entry in entries:
                if entry.is_symlink():
                    self.inside(entry.path)
                if entry.is_dir():
                    todo.append(entry.path)

    # -- paths

    def _fs(self, target: str) -> str:
        return self.fs._strip_protocol(target) if self.fs is not None else target

    def key(self, key: str) -> str:
        """The full path (or URL) of store key ``key``."""
        return f"{self.store}/{key}" if key else self.store

    # -- queries

    def exists(self, target: str) -> bool:
        if self.fs is not None:
            return self.fs.exists(self._fs(target))
        return os.path.exists(target)

    def is_dir(self, target: str) -> bool:
        if self.fs is not None:
            return self.fs.isdir(self._fs(target))
        return os.path.isdir(target)

    def read(self, key: str) -> bytes | None:
        """Bytes of store file ``key`` (None when it does not exist)."""
        try:
            if self.fs is not None:
                return self.fs.cat_file(self._fs(self.key(key)))
            with open(self.inside(self.key(key)), "rb") as f:
                return f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def children(self) -> list[str]:
        """Names of the store's child directories (its arrays), sorted."""
        if self.fs is not None:
            entries = self.fs.ls(self._fs(self.store), detail=True)
            names = (e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries)
            kinds = (e["type"] for e in entries)
            return sorted(n for n, k in zip(names, kinds, strict=True) if k == "directory")
        with os.scandir(self.store) as it:
            return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))

    def _walk(self, key: str) -> list[str]:
        """Every file below store key ``key`` (a directory), relative to it."""
        base = self.key(key)
        if self.fs is not None:
            root = self._fs(base).rstrip("/")
            if not self.fs.isdir(root):
                return []
            return [p[len(root) :].lstrip("/") for p in self.fs.find(root)]
        out = []
        for dirpath, _, names in os.walk(base):
            rel = os.path.relpath(dirpath, base).replace(os.sep, "/")
            out.extend(n if rel == "." else f"{rel}/{n}" for n in names)
        return out

    def files(self, key: str) -> set[str]:
        """Files below array directory ``key``, relative to it, temp files excluded."""
        return {f for f in self._walk(key) if not f.endswith(TEMP_SUFFIX)}

    def temp_files(self) -> list[str]:
        """Leftover temp files of interrupted atomic writes, as store keys."""
        return sorted(f for f in self._walk("") if f.endswith(TEMP_SUFFIX))

    def remove(self, key: str) -> None:
        if self.fs is not None:
            self.fs.rm_file(self._fs(self.key(key)))
        else:
            os.unlink(self.key(key))

    def mtime(self, key: str) -> float | None:
        """Modification time of a store file (None when the filesystem does not say)."""
        try:
            if self.fs is None:
                return os.stat(self.key(key)).st_mtime
            info = self.fs.info(self._fs(self.key(key)))
        except OSError:
            return None
        for name in ("mtime", "LastModified", "last_modified", "created", "updated"):
            value = info.get(name)
            if isinstance(value, int | float):
                return float(value)
            if hasattr(value, "timestamp"):
                return float(value.timestamp())
        return None

    def identity(self) -> tuple[int, int] | None:
        """Which folder holds the store now, as (device, inode): replacing the recording
        changes it. None for fsspec stores, or when the store is missing."""
        if self.fs is not None:
            return None
        try:
            st = os.stat(self.store)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def check_writable(self) -> None:
        """OSError (with its errno) when the local store cannot be written: a read-only file
        system or no write permission. Checked before a change starts, so that none fails
        midway (where zarr's parallel writes leave one error per file). fsspec: not checked."""
        if self.fs is not None:
            return
        if os.statvfs(self.store).f_flag & os.ST_RDONLY:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), self.store)
        if not os.access(self.store, os.W_OK):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), self.store)

    def zarr_store(self, read_only: bool):
        """A zarr store object for the run's store."""
        if self.fs is None:
            return zarr.storage.LocalStore(self.store, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(
            self.store, storage_options=dict(self.storage_options) or None, read_only=read_only
        )


def locate(
    path: Any, storage_options: Mapping[str, Any] | None = None, confine: Any = None
) -> Location:
    """The location of an existing run; RunNotFoundError when there is none at ``path``.
    With ``confine``, every file the location reads is checked; :meth:`Location.check_confined`
    checks the whole store at once."""
    loc = Location.of(path, storage_options, confine)
    given_store = loc.shown.rstrip("/").endswith(".zarr")
    if not loc.exists(loc.store if given_store else loc.run_dir):
        raise RunNotFoundError(f"run {loc.shown} does not exist; check the path")
    if loc.is_dir(loc.store):
        return loc
    if not given_store and loc.exists(f"{loc.run_dir}/zarr.json"):
        return loc.bare(loc.run_dir)
    raise RunNotFoundError(
        f"run {loc.shown} is not a run: it holds no {STORE_NAME}; pass a run directory "
        "written by the probe (or its .zarr store)"
    )
