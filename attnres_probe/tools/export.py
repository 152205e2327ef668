"""Writing figures to files: HTML and JSON directly, PNG/JPEG/WebP/SVG/PDF through kaleido.

Kaleido renders static images in a headless Chrome/Chromium. Starting the browser costs
seconds, so every static figure of one call is rendered in one browser session. Without a
browser kaleido would hang or fail deep inside; :func:`find_browser` checks first and the
error says how to get one.

HTML files of one call share one ``plotly.min.js`` written beside them (a figure page is then
tens of kilobytes instead of megabytes); ``self_contained=True`` inlines it into each file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import plotly.graph_objects as go

STATIC_FORMATS = ("png", "jpg", "jpeg", "webp", "svg", "pdf")
FORMATS = (*STATIC_FORMATS, "html", "json")
# Formats people ask for that kaleido cannot write, and what to do instead.
UNSUPPORTED = {
    "tif": "TIFF",
    "tiff": "TIFF",
    "gif": "GIF",
    "bmp": "BMP",
    "eps": "EPS",
    "emf": "EMF",
}
DEFAULT_SIZE = (1100, 620)  # width, height in CSS pixels for static images without their own
PLOTLY_JS = "plotly.min.js"


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
    if fmt in UNSUPPORTED:
        raise ExportError(
            f"format {fmt!r} is not one of {', '.join(FORMATS)}: kaleido cannot write "
            f"{UNSUPPORTED[fmt]}; export png (or svg/pdf) and convert it"
        )
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r} is not one of {', '.join(FORMATS)}; use one of them")
    return fmt


def same_format(a: str, b: str) -> bool:
    """True when two format names mean the same files (jpg and jpeg)."""
    return {a, b} <= {"jpg", "jpeg"} or a == b


def write_figures(
    items: Sequence[tuple[go.Figure, str | Path]],
    fmt: str | None = None,
    progress: Callable[[int, int, Path], None] | None = None,
    size: tuple[int | None, int | None] | None = None,
    scale: float = 1.0,
    self_contained: bool = False,
) -> list[Path]:
    """Write each (figure, path) in ``fmt`` (None: each path's suffix); every static image of
    the call is rendered in one browser session.

    size: (width, height) in CSS pixels; a given value wins over the figure's own layout size,
    which wins over :data:`DEFAULT_SIZE` (static images) or the browser window (HTML).
    scale: pixel density of raster images (2 doubles the pixels, not the layout).
    self_contained: inline plotly.js into every HTML file instead of one shared file beside.
    progress(done, total, path) is called after each file. Returns the paths written (the
    shared plotly.js last, when written).
    """
    if not scale > 0:
        raise ExportError(f"scale={scale} must be positive; 2 doubles the pixels of PNG/JPEG")
    paths = [Path(p) for _, p in items]
    formats = [check_format(fmt or p.suffix or "?") for p in paths]
    width, height = size or (None, None)
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
    done = 0

    def tick(path: Path) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, len(items), path)

    bundles: list[Path] = []
    for (fig, _), path, f in zip(items, paths, formats, strict=True):
        if f not in ("html", "json"):
            continue
        given = {k: v for k, v in (("width", width), ("height", height)) if v}
        if given:
            fig = go.Figure(fig).update_layout(**given)
        if f == "json":
            fig.write_json(path)
        elif self_contained:
            fig.write_html(path, include_plotlyjs=True, full_html=True)
        else:
            bundle = path.parent / PLOTLY_JS
            if bundle not in bundles:
                bundles.append(bundle)
            fig.write_html(path, include_plotlyjs=PLOTLY_JS, full_html=True)
        tick(path)
    if bundles:
        from plotly.offline import get_plotlyjs

        for bundle in bundles:  # written anew: one left by another plotly version would not fit
            bundle.write_text(get_plotlyjs(), encoding="utf-8")
    static = [
        (fig, path, f)
        for (fig, _), path, f in zip(items, paths, formats, strict=True)
        if f in STATIC_FORMATS
    ]
    if static:
        _write_static(static, (width, height), scale, tick)
    return paths + bundles


def _write_static(items, size, scale, tick) -> None:
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
                    format="jpg" if f == "jpeg" else f,
                    width=width or fig.layout.width or DEFAULT_SIZE[0],
                    height=height or fig.layout.height or DEFAULT_SIZE[1],
                    scale=scale,
                )
                tick(path)
    finally:
        kaleido.stop_sync_server(silence_warnings=True)
