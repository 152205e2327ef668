"""Writing figures to files: HTML and JSON directly, PNG/SVG/PDF through kaleido.

Kaleido renders static images in a headless Chrome/Chromium. Starting the browser costs
seconds, so every static figure of one call is rendered in one browser session. Without a
browser kaleido would hang or fail deep inside; :func:`find_browser` checks first and the
error says how to get one.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import plotly.graph_objects as go

FORMATS = ("png", "svg", "pdf", "html", "json")
STATIC_FORMATS = ("png", "svg", "pdf")
DEFAULT_SIZE = (1100, 620)  # width, height in CSS pixels for static images


class ExportError(ValueError):
    """A figure cannot be written; the message says what to install or change."""


def find_browser() -> str | None:
    """The Chrome/Chromium kaleido would use (``BROWSER_PATH`` first), or None when absent."""
    override = os.environ.get("BROWSER_PATH")
    if override:
        return override if os.path.isfile(override) and os.access(override, os.X_OK) else None
    try:
        from choreographer.browsers.chromium import Chromium
    except ImportError:
        return None
    path = Chromium.find_browser(skip_local=False)
    return path if path and os.path.isfile(path) else None


def check_format(fmt: str) -> str:
    fmt = fmt.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r} is not supported; use one of {', '.join(FORMATS)}")
    return fmt


def write_figures(
    items: Sequence[tuple[go.Figure, str | Path]],
    fmt: str,
    progress: Callable[[int, int, Path], None] | None = None,
    size: tuple[int, int] | None = None,
) -> list[Path]:
    """Write each (figure, path) in ``fmt``; static formats share one browser session.

    size: (width, height) of static images; a figure's own layout width/height wins.
    progress(done, total, path) is called after each file. Returns the paths written.
    """
    fmt = check_format(fmt)
    paths = [Path(p) for _, p in items]
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
    if fmt in STATIC_FORMATS:
        _write_static(items, paths, fmt, progress, size or DEFAULT_SIZE)
        return paths
    for i, ((fig, _), path) in enumerate(zip(items, paths, strict=True)):
        if fmt == "html":
            # Self-contained (plotly.js inlined): opens offline and on machines without a CDN.
            fig.write_html(path, include_plotlyjs=True, full_html=True)
        else:
            fig.write_json(path)
        if progress is not None:
            progress(i + 1, len(items), path)
    return paths


def _write_static(items, paths, fmt, progress, size) -> None:
    if find_browser() is None:
        where = os.environ.get("BROWSER_PATH")
        reason = f"BROWSER_PATH={where} is not an executable" if where else "none was found"
        raise ExportError(
            f"{fmt.upper()} export needs Chrome or Chromium and {reason}; install one "
            "(apt-get install -y chromium) or set BROWSER_PATH, or export --format html/json"
        )
    import kaleido

    width, height = size
    kaleido.start_sync_server(silence_warnings=True)
    try:
        with warnings.catch_warnings():
            # plotly passes kaleido options a running server ignores, and says so each call.
            warnings.filterwarnings("ignore", message="The kopts argument is ignored")
            for i, ((fig, _), path) in enumerate(zip(items, paths, strict=True)):
                fig.write_image(
                    path,
                    format=fmt,
                    width=fig.layout.width or width,
                    height=fig.layout.height or height,
                )
                if progress is not None:
                    progress(i + 1, len(items), path)
    finally:
        kaleido.stop_sync_server(silence_warnings=True)
