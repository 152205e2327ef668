"""The dashboard's ROOT and the rule that keeps it there: only runs under ROOT are served.

No Streamlit here, so the rule is testable on its own. A run is named by its path relative to
ROOT (posix form, e.g. ``"exp1/baseline"``, as the store's :func:`run_paths` lists it); a name
is served only when it resolves, symlinks followed, to a run inside ROOT whose recording,
checkpoint and config stay inside ROOT too, and its store is read confined to ROOT: no file
of it that resolves outside ROOT is ever read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import attnres_probe
from attnres_probe.checkpoint import CHECKPOINT_FILE, CONFIG_FILE
from attnres_probe.store import STORE_NAME, RunInfo, run_info
from attnres_probe.store.catalog import is_run

ROOT_ENV = "ATTNRES_PROBE_ROOT"

# What the dashboard reads (and writes pruning results into) inside a run directory.
RUN_PARTS = (STORE_NAME, CHECKPOINT_FILE, CONFIG_FILE)


class RunRefused(ValueError):
    """A run name that the dashboard will not open; the message says why."""


@dataclass(frozen=True)
class Root:
    """Where the dashboard looks for runs; ``path`` is None when there is nothing to show."""

    path: Path | None
    origin: str  # "argument" (ROOT given), "samples" (bundled sample_runs/), "missing"
    note: str  # one line for the page when something is unusual, else ""


def bundled_sample_runs() -> Path | None:
    """The repository's ``sample_runs/`` beside the package, or None when not shipped.

    In a source checkout (editable install) ``attnres_probe/`` and ``app/`` sit at the
    repository root next to ``sample_runs/``; a non-editable install carries no sample runs.
    """
    candidates = [
        Path(attnres_probe.__file__).resolve().parents[1] / "sample_runs",
        Path(__file__).resolve().parents[1] / "sample_runs",
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return None


def dashboard_root(environ: os._Environ | dict | None = None) -> Root:
    """The root named by ``$ATTNRES_PROBE_ROOT``, else the bundled sample runs."""
    environ = os.environ if environ is None else environ
    given = environ.get(ROOT_ENV, "").strip()
    if given:
        path = Path(given).expanduser().resolve()
        if not path.is_dir():
            return Root(None, "missing", f"ROOT {given} is not a directory")
        return Root(path, "argument", "")
    samples = bundled_sample_runs()
    if samples is None:
        return Root(
            None,
            "missing",
            "no ROOT was given and the bundled sample_runs/ is not installed with this "
            "package (they ship with the source repository); start the dashboard on a folder "
            "of runs: attnres-probe dashboard runs/",
        )
    return Root(samples.resolve(), "samples", "")


def _within(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def resolve_run(root: Path, name: str) -> Path:
    """The directory of run ``name`` under ``root``; RunRefused unless it stays inside ``root``.

    Refuses absolute paths, ``..`` components, URLs, empty names, names whose resolved
    path (symlinks followed) leaves ``root`` or is not a run, and runs whose recording,
    checkpoint or config is a symlink leaving ``root``. Names are used as given, never
    URL-decoded.
    """
    shown = repr(name)
    if not name or "\x00" in name:
        raise RunRefused(f"run name {shown} is empty or not printable")
    if "://" in name or name.startswith("~"):
        raise RunRefused(f"run {shown} is not a path under ROOT; name a run listed on Runs")
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or name.startswith("\\"):
        raise RunRefused(f"run {shown} is an absolute path; only runs under ROOT are served")
    if ".." in posix.parts or ".." in windows.parts:
        raise RunRefused(f"run {shown} climbs out of ROOT with '..'; only runs under ROOT")
    root = root.resolve()
    path = (root / posix).resolve()
    if not _within(path, root):
        raise RunRefused(f"run {shown} resolves outside ROOT (a symlink?); it is not served")
    if not is_run(str(path)):
        raise RunRefused(f"run {shown} is not a run directory under ROOT")
    for part in RUN_PARTS:
        if os.path.lexists(path / part) and not _within((path / part).resolve(), root):
            raise RunRefused(f"run {shown} keeps {part} outside ROOT (a symlink); it is not served")
    return path


def served_info(root: Path, name: str) -> RunInfo:
    """The store's :class:`RunInfo` of run ``name``, read confined to ``root``; status
    'refused' (nothing opened) when the name or one of its files leaves ``root``."""
    try:
        path = resolve_run(root, name)
    except RunRefused as err:
        return RunInfo(name=name, path=name, status="refused", error=str(err))
    return run_info(path, name, confine=root)
