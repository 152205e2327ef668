"""Screenshot one dashboard page over a folder of runs (the README's picture).

    .venv/bin/python scripts/dashboard_screenshot.py [--root sample_runs] [--page compare]
        [--query "compare=baseline-s0&compare=block-s0"] [--out docs/dashboard.png]

Starts ``attnres-probe dashboard ROOT`` on a free local port, opens the page in headless
Debian Chromium through Playwright, waits until every figure is drawn, saves a PNG and stops
the server. Needs Chromium (``apt-get install -y chromium``) and the ``playwright`` package.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRAWN = """() => {
    const charts = [...document.querySelectorAll('[data-testid="stPlotlyChart"]')];
    return charts.length > 0 && charts.every(el => el.querySelector('.main-svg'))
        && !document.querySelector('[data-testid="stStatusWidget"]');
}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO / "sample_runs")
    parser.add_argument("--page", default="compare", help="page path, '' for Runs")
    parser.add_argument("--query", default="compare=baseline-s0&compare=block-s0")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    parser.add_argument("--width", type=int, default=1500)
    parser.add_argument("--height", type=int, default=1700)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from attnres_probe.app.server import DashboardServer

    with DashboardServer(args.root) as dashboard:
        dashboard.wait_ready()
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                page = browser.new_page(viewport={"width": args.width, "height": args.height})
                page.goto(f"{dashboard.url}/{args.page}?{args.query}")
                page.wait_for_selector("h1", timeout=60_000)
                page.wait_for_timeout(500)
                page.wait_for_function(DRAWN, timeout=120_000)
                page.wait_for_timeout(1000)  # let plotly finish its layout transitions
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=True)
            finally:
                browser.close()
    print(args.out)


if __name__ == "__main__":
    main()
