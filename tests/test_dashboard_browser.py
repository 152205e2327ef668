"""The dashboard in a real browser: `attnres-probe dashboard ROOT` as a subprocess, headless
Debian Chromium driven by Playwright (never `playwright install`: the system browser is used).

Every page is visited; none may show an exception; a screenshot of each lands in
test-artifacts/. Skipped, saying why, only when Chromium or Playwright is absent.
"""

from __future__ import annotations

import html
import shutil
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from test_app_runs import (
    BASELINE,
    FULL,
    HTML_NAME,
    LIVE,
    TRAINED,
    _live_writers,
    build_root,
    small,
    trained_run,
)

from attnres_probe.app.browser import screenshot_whole_page, settle
from attnres_probe.app.server import DashboardServer
from attnres_probe.store.synthetic import step_values

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# (url path, page title, query, figures expected)
PAGES = [
    ("", "Runs", {}, 1),
    ("runs", "Runs", {}, 1),
    ("dilution", "Dilution", {"run": BASELINE}, 4),
    ("depth-attention", "Depth attention", {"run": TRAINED, "step": "2"}, 3),  # + per token
    ("gradients", "Gradients", {"run": FULL}, 5),
    ("training", "Training", {"compare": [BASELINE, FULL]}, 3),
    ("pruning", "Pruning", {"run": TRAINED}, 0),
    ("compare", "Compare", {"compare": [BASELINE, FULL]}, 8),
]
SAMPLE_RUNS = REPO / "sample_runs"
SAMPLES = sorted(p.name for p in SAMPLE_RUNS.iterdir() if (p / "recording.zarr").is_dir())


def sample_pages(run: str, compared: list[str]) -> list[tuple[str, str, dict, None]]:
    """Every page over sample runs: ``run`` on the one-run pages, ``compared`` on the others.
    How many figures a page draws depends on what the sample runs recorded: every one drawn."""
    joined = ",".join(compared)  # the comma form of ?compare=
    return [
        ("", "Runs", {}, None),
        ("dilution", "Dilution", {"run": run}, None),
        ("depth-attention", "Depth attention", {"run": run}, None),
        ("gradients", "Gradients", {"run": run}, None),
        ("training", "Training", {"compare": joined}, None),
        ("pruning", "Pruning", {"run": run}, None),
        ("compare", "Compare", {"compare": joined}, None),
    ]


# How many plotly figures have been drawn (each draws several .main-svg layers).
DRAWN_FIGURES = """n => [...document.querySelectorAll('[data-testid="stPlotlyChart"]')]
    .filter(el => el.querySelector('.main-svg')).length >= n"""

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"no Chromium at {CHROMIUM}: apt-get install -y chromium to run the browser test",
    ),
]


EVERY_FIGURE_DRAWN = """() => [...document.querySelectorAll('[data-testid="stPlotlyChart"]')]
    .every(el => el.querySelector('.main-svg'))"""
SLIDER = "[data-testid='stSlider'] input[type='range']"
SLIDER_MAX_ABOVE = f"""v => Number(document.querySelector("{SLIDER}").max) > v"""


def append_steps(run_dir: Path, first: int, count: int) -> None:
    """Record ``count`` more steps into a live run through its (still open) writer."""
    writer = next(w for w in _live_writers if Path(w.path) == run_dir)
    rng = np.random.default_rng(first)
    for step in range(first, first + count):
        writer.append(step, step_values(small("full"), step, first + count, rng))
    writer.flush()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`attnres-probe dashboard ROOT --port P` running over a root with every kind of run."""
    root = build_root(tmp_path_factory.mktemp("browser"))
    log = tmp_path_factory.mktemp("logs") / "dashboard.log"
    with DashboardServer(root, log=log) as dashboard:
        # Trained while the server starts; the run table is read afresh on every page.
        shutil.copytree(trained_run(tmp_path_factory.getbasetemp()), root / TRAINED)
        try:
            dashboard.wait_ready(timeout_s=30.0)
        except RuntimeError as err:
            pytest.fail(str(err))
        yield dashboard.url, log, root


def query_string(query: dict) -> str:
    parts = []
    for key, value in query.items():
        for v in value if isinstance(value, list) else [value]:
            parts.append(f"{key}={quote(v, safe='')}")
    return "?" + "&".join(parts) if parts else ""


def test_every_page_renders_in_a_real_browser_without_an_exception(server):
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    url, log, root = server
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1900})
            visit(page, url, PAGES, "dashboard", log)

            # A run named with HTML is text: no <img> element appears, the name is shown as is.
            page.goto(f"{url}/dilution{query_string({'run': HTML_NAME})}")
            settle(page)
            page.wait_for_selector("[data-testid='stPlotlyChart'] .main-svg", timeout=30_000)
            assert page.locator("img[src='x']").count() == 0
            assert page.get_by_role("combobox", name="Run").input_value() == HTML_NAME
            assert HTML_NAME in page.locator(".legendtext").first.text_content()

            # The sidebar choice goes into the URL, so the view can be shared and reloaded.
            page.goto(f"{url}/gradients{query_string({'run': BASELINE})}")
            settle(page)
            page.get_by_role("combobox", name="Run").click()
            page.get_by_role("option", name=LIVE, exact=True).click()
            page.wait_for_function(f"() => location.search.includes('run={LIVE}')")
            page.reload()
            settle(page)
            assert page.get_by_role("combobox", name="Run").input_value() == LIVE

            # A live run refreshes by itself: new flushes reach the page without a reload.
            page.goto(f"{url}/dilution{query_string({'run': LIVE, 'window': 'one step'})}")
            settle(page)
            page.get_by_role("combobox", name="Live refresh").click()
            page.get_by_role("option", name="2 s", exact=True).click()
            settle(page)
            before = int(page.locator(SLIDER).first.evaluate("el => el.max"))
            append_steps(root / LIVE, before + 1, 4)
            page.wait_for_function(SLIDER_MAX_ABOVE, arg=before, timeout=15_000)
            assert int(page.locator(SLIDER).first.evaluate("el => el.value")) == before + 4

            # A URL climbing out of ROOT is refused on the page, and nothing outside is shown.
            page.goto(f"{url}/dilution?run=..%2Foutside")
            settle(page)
            warning = page.locator("[data-testid='stAlert']").first.inner_text()
            assert "climbs out of ROOT" in warning
            assert page.locator("[data-testid='stException']").count() == 0
        finally:
            browser.close()
    assert html.escape(HTML_NAME) != HTML_NAME  # the test name really contains markup


def visit(page, url: str, pages, prefix: str, log: Path) -> None:
    """Open every page, wait for its figures, check none raised, keep a full-page screenshot."""
    for path, title, query, n_figures in pages:
        page.goto(f"{url}/{path}{query_string(query)}")
        settle(page)
        assert page.locator("h1").first.inner_text() == title
        if n_figures is None:  # every figure the page has, however many (or none)
            page.wait_for_function(EVERY_FIGURE_DRAWN, timeout=60_000)
        elif n_figures:
            page.wait_for_function(DRAWN_FIGURES, arg=n_figures, timeout=60_000)
        charts = page.locator("[data-testid='stPlotlyChart']").count()
        errors = page.locator("[data-testid='stException']").all_inner_texts()
        assert not errors, f"{title}: {errors}\n{log.read_text()}"
        if n_figures is not None:
            assert charts == n_figures, f"{prefix} {title}: {charts} figures"
        page.wait_for_timeout(500)  # plotly's layout transitions
        screenshot_whole_page(page, ARTIFACTS / f"{prefix}-{path or 'runs'}.png")


@pytest.mark.skipif(not SAMPLES, reason="no sample_runs/ in this checkout")
# Two runs is the common case for people to look at; the default suite keeps all seven, the
# harder case for legibility (the two-run pictures: `pytest -m slow`).
@pytest.mark.parametrize("case", [pytest.param("two", marks=pytest.mark.slow), "seven"])
def test_every_page_over_two_and_over_the_seven_sample_runs(case, tmp_path):
    """Screenshots of every page over two sample runs and over all seven land in
    test-artifacts/ (samples-two-*.png, samples-seven-*.png) for people to look at."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    if case == "two":
        root = tmp_path / "two"
        chosen = ["baseline-s0", "block-s0"]
        for name in chosen:
            shutil.copytree(SAMPLE_RUNS / name, root / name)
        pages = sample_pages("block-s0", chosen)
    else:
        root, pages = SAMPLE_RUNS, sample_pages("block-s1", SAMPLES)
    ARTIFACTS.mkdir(exist_ok=True)
    log = tmp_path / "dashboard.log"
    with DashboardServer(root, log=log) as dashboard:
        dashboard.wait_ready(timeout_s=60.0)
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                visit(page, dashboard.url, pages, f"samples-{case}", log)
            finally:
                browser.close()
