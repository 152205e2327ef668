"""The catalog of runs under the dashboard's ROOT: finding, refusing and summarising them.

No Streamlit here, so the rules that keep the dashboard inside its root are testable on their
own. A run is named by its path relative to ROOT (posix form, e.g. ``"exp1/baseline"``); only
names that resolve, symlinks followed, to a run directory inside ROOT are ever opened.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

ROOT_ENV = "ATTNRES_PROBE_ROOT"
# A run whose status is 'running' but whose store has not changed for this long is 'stalled'
# (its writer was probably killed): the dashboard stops polling it.
LIVE_WINDOW_S = 120.0

TRAIN_HINT = "attnres-probe train --residual full --layers 4 --steps 200 --out {root}/full-s0"


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
    import attnres_probe

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


def is_run_dir(path: Path) -> bool:
    """True for a run directory (holding ``recording.zarr``) or a bare ``.zarr`` store."""
    if path.name.endswith(".zarr"):
        return (path / "zarr.json").is_file()
    return (path / "recording.zarr").is_dir()


def resolve_run(root: Path, name: str) -> Path:
    """The directory of run ``name`` under ``root``; RunRefused unless it stays inside ``root``.

    Refuses absolute paths, ``..`` components, URLs, empty names, and names whose resolved
    path (symlinks followed) leaves ``root`` or is not a run.
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
    if not is_run_dir(path):
        raise RunRefused(f"run {shown} is not a run directory under ROOT")
    return path


def run_names(root: Path) -> list[str]:
    """Names (relative to ``root``) of every run directory below ``root``, sorted.

    Symlinked entries are listed; :func:`resolve_run` decides whether they may be opened.
    """
    root = root.resolve()
    if is_run_dir(root):
        return ["."]
    found: list[str] = []
    for dirpath, dirnames, _ in os.walk(root, followlinks=False):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            child = here / d
            if is_run_dir(child):
                found.append(child.relative_to(root).as_posix())
            elif not child.is_symlink():
                keep.append(d)
        dirnames[:] = keep
    return sorted(found)


@dataclass(frozen=True)
class RunRow:
    """One row of the Runs table; ``state`` is live, stalled, finished, broken or refused."""

    name: str
    state: str
    kind: str = ""
    layers: int | None = None
    sublayers: int | None = None
    steps: int = 0
    last_step: int | None = None
    last_loss: float | None = None
    has_checkpoint: bool = False
    message: str = ""

    @property
    def openable(self) -> bool:
        return self.state not in ("broken", "refused")


def marker_mtime(path: Path) -> float | None:
    """Modification time of the store's root metadata (the commit marker is written last)."""
    marker = (
        path / "zarr.json" if path.name.endswith(".zarr") else path / "recording.zarr/zarr.json"
    )
    try:
        return marker.stat().st_mtime
    except OSError:
        return None


def last_write_age(path: Path) -> float:
    """Seconds since the run's store last committed a flush (inf when unknown)."""
    mtime = marker_mtime(path)
    return math.inf if mtime is None else max(0.0, time.time() - mtime)


def run_state(status: str, age_s: float) -> str:
    """live / stalled / finished from the stored status and the age of the last write."""
    if status == "finished":
        return "finished"
    return "live" if age_s <= LIVE_WINDOW_S else "stalled"


def summarize(root: Path, name: str, open_run=None) -> RunRow:
    """The Runs-table row of ``name``; any failure becomes a 'broken' row with its reason."""
    if open_run is None:
        from attnres_probe.store import open_run
    try:
        path = resolve_run(root, name)
    except RunRefused as err:
        return RunRow(name=name, state="refused", message=str(err))
    try:
        ds = open_run(path)
        attrs = ds.attrs
        status = str(attrs.get("status", "finished"))
        n_steps = int(ds.sizes.get("step", 0))
        last_step = int(ds["step"].values[-1]) if n_steps else None
        last_loss = None
        if n_steps and "loss" in ds.data_vars:
            value = float(ds["loss"].isel(step=-1).values)
            last_loss = value if math.isfinite(value) else None
        layers = attrs.get("n_layers")
        state = run_state(status, last_write_age(path))
        message = ""
        if state == "stalled":
            message = "status is 'running' but nothing was written for a while; writer gone?"
        elif n_steps == 0:
            message = "no recorded steps yet"
        return RunRow(
            name=name,
            state=state,
            kind=str(attrs.get("residual", "")),
            layers=int(layers) if layers is not None else None,
            sublayers=int(ds.sizes["sublayer"]) if "sublayer" in ds.sizes else None,
            steps=n_steps,
            last_step=last_step,
            last_loss=last_loss,
            has_checkpoint=(path / "checkpoint.safetensors").is_file(),
            message=message,
        )
    except Exception as err:  # noqa: BLE001 - any failure is shown on the row, never raised
        return RunRow(name=name, state="broken", message=describe_error(err))


def describe_error(err: BaseException) -> str:
    """One line for a failure: the error's own message, prefixed by its type when unclear."""
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, ValueError | FileNotFoundError | PermissionError):
        return text
    return f"{type(err).__name__}: {text}"


_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~:$&])")


def literal(text: object) -> str:
    """``text`` escaped so Streamlit markdown shows it verbatim (no HTML, links, emphasis)."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", str(text)).replace("\n", " ")
