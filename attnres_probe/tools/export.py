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
    """``fmt`` (or a file suffix such as '.png') as a lower-case format name, checked."""
    fmt = fmt.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r} is not supported; use one of {', '.join(FORMATS)}")
    return fmt


def write_figures(
    items: Sequence[tuple[go.Figure, str | Path]],
    fmt: str | None = None,
    progress: Callable[[int, int, Path], None] | None = None,
    size: tuple[int, int] | None = None,
) -> list[Path]:
    """Write each (figure, path) in ``fmt`` (None: each path's suffix); every static image of
    the call is rendered in one browser session.

    size: (width, height) of static images; a figure's own layout width/height wins.
    progress(done, total, path) is called after each file. Returns the paths written.
    """
    paths = [Path(p) for _, p in items]
    formats = [check_format(fmt or p.suffix or "?") for p in paths]
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
    done = 0

    def tick(path: Path) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, len(items), path)

    for (fig, _), path, f in zip(items, paths, formats, strict=True):
        if f == "html":
            # Self-contained (plotly.js inlined): opens offline and on machines without a CDN.
            fig.write_html(path, include_plotlyjs=True, full_html=True)
            tick(path)
        elif f == "json":
            fig.write_json(path)
            tick(path)
    static = [
        (fig, path, f)
        for (fig, _), path, f in zip(items, paths, formats, strict=True)
        if f in STATIC_FORMATS
    ]
    if static:
        _write_static(static, size or DEFAULT_SIZE, tick)
    return paths


def _write_static(items, size, tick) -> None:
    if find_browser() is None:
        where = os.environ.get("BROWSER_PATH")
        reason = f"BROWSER_PATH={where} is not an executable" if where else "none was found"
        kinds = "/".join(sorted({f.upper() for _, _, f in items}))
        raise ExportError(
            f"{kinds} export needs Chrome or Chromium and {reason}; install one "
            "(apt-get install -y chromium) or set BROWSER_PATH, or export --format html/json"
        )
    import kaleido

    width, height = size
    kaleido.start_sync_server(silence_warnings=True)
    try:
        with warnings.catch_warnings():
            # plotly passes kaleido options a running server ignores, and says so each call.
            warnings.filterwarnings("ignore", message="The kopts argument is ignored")
            for fig, path, f in items:
                fig.write_image(
                    path,
                    format=f,
                    width=fig.layout.width or width,
                    height=fig.layout.height or height,
                )
                tick(path)
    finally:
        kaleido.stop_sync_server(silence_warnings=True)
