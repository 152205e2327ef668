"""The catalog of runs under the dashboard's ROOT: finding, refusing and summarising them.

No Streamlit here, so the rules that keep the dashboard inside its root are testable on their
own. A run is named by its path relative to ROOT (posix form, e.g. ``"exp1/baseline"``); only
names that resolve, symlinks followed, to a run directory inside ROOT are ever opened.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

ROOT_ENV = "ATTNRES_PROBE_ROOT"
COMMAND_ENV = "ATTNRES_PROBE_COMMAND"  # the command line as the user runs it, for hints

# What the dashboard reads (and writes pruning results into) inside a run directory.
RUN_PARTS = ("recording.zarr", "checkpoint.safetensors", "config.json")

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

    Refuses absolute paths, ``..`` components, URLs, empty names, names whose resolved
    path (symlinks followed) leaves ``root`` or is not a run, and runs whose recording or
    checkpoint is a symlink leaving ``root``. Names are used as given, never URL-decoded.
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
    for part in RUN_PARTS:
        if os.path.lexists(path / part) and not _within((path / part).resolve(), root):
            raise RunRefused(f"run {shown} keeps {part} outside ROOT (a symlink); it is not served")
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
    """One row of the Runs table; ``state`` is live, interrupted, finished, broken or refused."""

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


def run_state(status: str) -> str:
    """live / interrupted / finished from the status the store reports ('running' or 'live'
    only while the writer is alive; 'interrupted' when it died before closing)."""
    if status in ("running", "live"):
        return "live"
    if status == "interrupted":
        return "interrupted"
    return "finished"


def summarize(root: Path, name: str, run_info=None) -> RunRow:
    """The Runs-table row of ``name``, from the store's header (no data is loaded); any
    failure becomes a 'broken' row with its reason, a path outside ROOT a 'refused' one."""
    if run_info is None:
        from attnres_probe.store import run_info
    try:
        path = resolve_run(root, name)
    except RunRefused as err:
        return RunRow(name=name, state="refused", message=str(err))
    try:
        info = run_info(path, name)
    except Exception as err:  # noqa: BLE001 - any failure is shown on the row, never raised
        return RunRow(name=name, state="broken", message=describe_error(err))
    if info.status == "broken":
        return RunRow(name=name, state="broken", message=" ".join(info.error.split()))
    state = run_state(info.status)
    message = ""
    if state == "interrupted":
        message = "the writer stopped before finishing; every committed step is shown"
    elif info.n_steps == 0:
        message = "no recorded steps yet"
    return RunRow(
        name=name,
        state=state,
        kind=info.residual or "",
        layers=info.n_layers,
        sublayers=2 * info.n_layers if info.n_layers is not None else None,
        steps=info.n_steps,
        last_step=info.last_step,
        last_loss=info.last_loss,
        has_checkpoint=(path / "checkpoint.safetensors").is_file(),
        message=message,
    )


def describe_error(err: BaseException) -> str:
    """One line for a failure: the error's own message, prefixed by its type when unclear."""
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, ValueError | FileNotFoundError | PermissionError):
        return text
    return f"{type(err).__name__}: {text}"


def decoded_attrs(attrs: dict) -> dict:
    """A run's attributes with the JSON strings among them (model_config, versions, ...)
    decoded into nested values, for display; other values unchanged."""
    import json

    out = {}
    for key, value in attrs.items():
        if isinstance(value, str) and value[:1] in "{[":
            try:
                value = json.loads(value)
            except ValueError:
                pass
        out[str(key)] = value
    return out


_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~:$&])")


def literal(text: object) -> str:
    """``text`` escaped so Streamlit markdown shows it verbatim (no HTML, links, emphasis)."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", str(text)).replace("\n", " ")
