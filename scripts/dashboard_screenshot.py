"""Screenshots of dashboard pages over a folder of runs (the README's pictures).

    .venv/bin/python scripts/dashboard_screenshot.py                 # the README's pictures
    .venv/bin/python scripts/dashboard_screenshot.py --page compare \
        --query "compare=baseline-s0,block-s0" --out docs/two.png    # one page of your choice

Starts ``attnres-probe dashboard ROOT`` on a free local port, opens each page in headless
Debian Chromium through Playwright, waits until every figure is drawn, saves a PNG of the
page's whole content and stops the server. Needs Chromium (``apt-get install -y chromium``)
and the ``playwright`` package.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SAMPLES = "baseline-s0,baseline-s1,baseline-s2,block-s0,block-s1,block-s2,full-s0"
# (page path, query string, picture) shown in the README
README_PICTURES = [
    ("compare", f"compare={SAMPLES}", REPO / "docs" / "dashboard.png"),
    ("training", f"compare={SAMPLES}", REPO / "docs" / "dashboard-training.png"),
    ("pruning", "run=block-s0", REPO / "docs" / "dashboard-pruning.png"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO / "sample_runs")
    parser.add_argument("--page", help="page path ('' for Runs); default: the README's set")
    parser.add_argument("--query", default="", help="query string, e.g. run=block-s0")
    parser.add_argument("--out", type=Path, help="the PNG to write (with --page)")
    parser.add_argument("--width", type=int, default=1400)
    args = parser.parse_args()
    if args.page is not None and args.out is None:
        parser.error("--page needs --out")
    shots = README_PICTURES if args.page is None else [(args.page, args.query, args.out)]
    from playwright.sync_api import sync_playwright

    from attnres_probe.app.browser import DRAWN, screenshot_whole_page, settle
    from attnres_probe.app.server import DashboardServer

    with DashboardServer(args.root) as dashboard:
        dashboard.wait_ready()
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                page = browser.new_page(viewport={"width": args.width, "height": 1000})
                for path, query, out in shots:
                    page.goto(f"{dashboard.url}/{path}?{query}")
                    settle(page, timeout_ms=120_000)
                    page.wait_for_function(DRAWN, timeout=120_000)
                    page.wait_for_timeout(1000)  # let plotly finish its layout transitions
                    screenshot_whole_page(page, out)
                    print(out)
            finally:
                browser.close()


if __name__ == "__main__":
    main()
