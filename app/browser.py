"""Driving the dashboard in a real browser page (a Playwright ``Page``): waiting until a page is
drawn and screenshotting all of it. Shared by the browser tests and the README screenshots;
nothing here imports Playwright, the caller brings the page.
"""

from __future__ import annotations

from pathlib import Path

# Every plotly figure on the page has drawn its SVG and Streamlit is not running the script.
DRAWN = """() => {
    const charts = [...document.querySelectorAll('[data-testid="stPlotlyChart"]')];
    return charts.length > 0 && charts.every(el => el.querySelector('.main-svg'))
        && !document.querySelector('[data-testid="stStatusWidget"]');
}"""
CONTENT_HEIGHT = """() => document.querySelector('[data-testid="stMainBlockContainer"]')
    .scrollHeight"""


def settle(page, timeout_ms: int = 30_000) -> None:
    """Wait until Streamlit has finished running the script and drawing."""
    page.wait_for_selector("h1", timeout=timeout_ms)
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms
    )


def screenshot_whole_page(page, path: Path) -> None:
    """A PNG of the page's whole content. Streamlit scrolls inside its main block, so the
    window is made as tall as the content first, then set back."""
    size = page.viewport_size
    height = int(page.evaluate(CONTENT_HEIGHT)) + 120
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], height)})
    page.wait_for_timeout(700)  # plotly redraws for the new size
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))
    page.set_viewport_size(size)
