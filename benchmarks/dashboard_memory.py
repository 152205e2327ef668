"""Peak memory of the dashboard with 50 runs listed, beside its idle figure on an empty ROOT.

    .venv/bin/python benchmarks/dashboard_memory.py [--runs 50] [--steps 1000] [--every 2]
        [--repeats 3] [--method both|server|apptest]
        [--save benchmarks/results/dashboard_memory.txt]

The runs are written with the store's RunWriter: 16 layers (32 sublayers), ``--steps``
training steps recorded every ``--every`` steps, kinds taking turns (baseline, Full AttnRes
with 33 sources, Block AttnRes with 8 blocks), every variable of the schema, finished, no
checkpoint. The same visit is made on an empty ROOT and on the 50-run ROOT, alternating,
``--repeats`` times each, and on a ROOT of two of the runs (what drawing the pages costs
before many runs are listed): the Runs page (50 rows, the loss of the first 12), then Dilution,
Depth attention and Gradients of one run and Compare of the default pair.

Methods (both measure one fresh process per visit):

- ``server``: ``attnres-probe dashboard ROOT --port P`` as a subprocess, the pages opened in
  headless Chromium through Playwright; the figure is the Streamlit server process's
  ``VmHWM`` (peak resident set) from ``/proc/<pid>/status`` after the last page has drawn.
  The browser's memory is not counted.
- ``apptest``: a fresh Python process drives the dashboard script through Streamlit's
  AppTest (no server, no browser) and reports its own ``VmHWM``.

Linux only (``/proc``). Needs Chromium and Playwright for ``server``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from attnres_probe.resources import cpu_name

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "app" / "dashboard.py"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip
KINDS = ("baseline", "full", "block")

# In a fresh process: the dashboard through AppTest over $ATTNRES_PROBE_ROOT, the same visit
# as the browser makes; prints the process's peak RSS and what the pages showed.
APPTEST_VISIT = """
import json, sys, time
from streamlit.testing.v1 import AppTest
dashboard, run, other = sys.argv[1:4]
t0 = time.perf_counter()
at = AppTest.from_file(dashboard, default_timeout=300)
at.run()
figures, problems = len(at.get("plotly_chart")), [e.message for e in at.exception]
for page, query in [("dilution", run), ("depth_attention", other), ("gradients", run),
                    ("compare", None)]:
    if query and any(s.key == "run" for s in at.sidebar.selectbox):
        at.sidebar.selectbox(key="run").select(query).run()
    at.switch_page(f"views/{page}.py").run()
    figures += len(at.get("plotly_chart"))
    problems += [e.message for e in at.exception]
with open("/proc/self/status") as f:
    status = dict(line.split(":", 1) for line in f)
print(json.dumps({"peak_kib": int(status["VmHWM"].split()[0]),
                  "rss_kib": int(status["VmRSS"].split()[0]),
                  "seconds": time.perf_counter() - t0, "figures": figures,
                  "problems": problems}))
"""


# ----------------------------------------------------------------------------- runs


def build_runs(
    root: Path, n_runs: int, n_layers: int = 16, steps: int = 1000, every: int = 2
) -> list[str]:
    """Write ``n_runs`` finished runs under ``root`` (kinds taking turns); returns their names.

    Each records ``steps`` training steps every ``every`` steps, with the writer's default
    flush size, as the probe would.
    """
    from attnres_probe.models.config import ModelConfig
    from attnres_probe.store.synthetic import write_run

    names = []
    for index in range(n_runs):
        residual = KINDS[index % len(KINDS)]
        name = f"{residual}-{index:02d}"
        n_blocks = math.gcd(8, 2 * n_layers)  # 8, or fewer when the model is too shallow
        cfg = ModelConfig(
            residual=residual, n_layers=n_layers, d_model=64, n_heads=4, n_blocks=n_blocks
        )
        recorded = len(range(0, steps, every))
        write_run(
            root / name,
            cfg,
            recorded,
            every,
            run_name=name,
            attrs={"probe_every": every},
            seed=index,
        )
        names.append(name)
    return names


# ----------------------------------------------------------------------------- measuring


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS of process ``pid`` in KiB."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {key: int(fields[key].split()[0]) for key in ("VmHWM", "VmRSS")}


def visits(run: str | None, other: str | None) -> list[tuple[str, str, int]]:
    """(url path, query string, figures drawn) of each page the visit opens: with no runs,
    every page shows a note and no figure."""
    if run is None:
        return [(path, "", 0) for path in ("", "dilution", "depth-attention", "gradients",
                                           "compare")]  # fmt: skip
    return [("", "", 1), ("dilution", f"?run={run}", 2), ("depth-attention", f"?run={other}", 2),
            ("gradients", f"?run={run}", 1), ("compare", "", 5)]  # fmt: skip


def settle(page, figures: int) -> None:
    """Wait until the page shows ``figures`` drawn figures, or (0) its note."""
    page.wait_for_selector("h1", timeout=120_000)
    if figures == 0:
        page.wait_for_selector("[data-testid='stAlert']", timeout=120_000)
    page.wait_for_function(
        """n => [...document.querySelectorAll('[data-testid="stPlotlyChart"]')]
            .filter(el => el.querySelector('.main-svg')).length >= n""",
        arg=figures,
        timeout=300_000,
    )
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=300_000
    )


def measure_server(root: Path, run: str | None, other: str | None) -> dict:
    """Peak RSS of the Streamlit server behind ``attnres-probe dashboard ROOT`` while headless
    Chromium opens the pages of :func:`visits`."""
    from playwright.sync_api import sync_playwright

    from attnres_probe.app.server import DashboardServer

    with DashboardServer(root) as dashboard:
        t0 = time.perf_counter()
        dashboard.wait_ready(timeout_s=120.0)
        server = dashboard.server_pid()
        figures, problems = 0, []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1900})
                for path, query, expected in visits(run, other):
                    page.goto(f"{dashboard.url}/{path}{query}")
                    settle(page, expected)
                    figures += page.locator("[data-testid='stPlotlyChart']").count()
                    problems += page.locator("[data-testid='stException']").all_inner_texts()
            finally:
                browser.close()
        seconds = time.perf_counter() - t0
        status = proc_status(server)
    return {"peak_kib": status["VmHWM"], "rss_kib": status["VmRSS"], "seconds": seconds,
            "figures": figures, "problems": problems}  # fmt: skip


def measure_apptest(root: Path, run: str | None, other: str | None) -> dict:
    """Peak RSS of a fresh process that opens the same pages through AppTest."""
    env = os.environ | {"ATTNRES_PROBE_ROOT": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", APPTEST_VISIT, str(DASHBOARD), run or "", other or ""],
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- report


def machine() -> str:
    cpu = cpu_name()
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} CPUs, {total:.0f} GiB RAM, no GPU used (CPU only)"


def versions(method: str) -> str:
    names = ["streamlit", "xarray", "zarr", "numpy", "pandas", "plotly", "attnres-probe"]
    parts = [f"python {platform.python_version()}"] + [f"{n} {version(n)}" for n in names]
    if method in ("both", "server"):
        parts.append(f"playwright {version('playwright')}")
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            shown = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True)
            parts.append(shown.stdout.strip().split(" built")[0])
    return ", ".join(parts)


def disk_size(root: Path) -> tuple[float, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20, len(files)


def mib(kib: float) -> str:
    return f"{kib / 1024:.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1000, help="training steps per run")
    parser.add_argument("--every", type=int, default=2, help="record every N-th step")
    parser.add_argument("--repeats", type=int, default=3, help="visits per ROOT and method")
    parser.add_argument("--method", choices=("both", "server", "apptest"), default="both")
    parser.add_argument("--save", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    if args.runs < 3:
        parser.error(f"--runs {args.runs}: give at least 3 (2 runs are measured on their own)")
    methods = ["server", "apptest"] if args.method == "both" else [args.method]
    if "server" in methods and not Path(CHROMIUM).exists():
        print(f"no Chromium at {CHROMIUM}: use --method apptest", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="dashboard-memory-") as tmp:
        empty, one, full = Path(tmp) / "empty", Path(tmp) / "one", Path(tmp) / "runs"
        empty.mkdir()
        t0 = time.perf_counter()
        names = build_runs(full, args.runs, args.layers, args.steps, args.every)
        built_s = time.perf_counter() - t0
        size_mb, n_files = disk_size(full)
        run, other = names[0], names[1]  # a baseline run and a Full AttnRes one
        (one / run).parent.mkdir()
        shutil.copytree(full / run, one / run)
        shutil.copytree(full / other, one / other)
        roots = [("empty", empty, (None, None)), ("2 runs", one, (run, other)),
                 (f"{args.runs} runs", full, (run, other))]  # fmt: skip
        results: dict[tuple[str, str], list[dict]] = {}
        for repeat in range(args.repeats):
            for method in methods:
                measure = measure_server if method == "server" else measure_apptest
                for label, root, pages in roots:
                    result = measure(root, *pages)
                    results.setdefault((method, label), []).append(result)
                    print(f"[{repeat + 1}/{args.repeats}] {method:7s} {label:8s} peak "
                          f"{mib(result['peak_kib'])}, {result['seconds']:.1f} s, "
                          f"{result['figures']} figures", file=sys.stderr)  # fmt: skip
                    if result["problems"]:
                        print(f"  exceptions: {result['problems']}", file=sys.stderr)

    recorded = len(range(0, args.steps, args.every))
    lines = [
        f"dashboard memory: peak RSS with {args.runs} runs listed vs an empty ROOT and 2 runs",
        f"machine: {machine()}; 1-minute load average {os.getloadavg()[0]:.1f} at the end",
        f"versions: {versions(args.method)}",
        f"runs: {args.runs} x {args.layers} layers, {args.steps} steps recorded every "
        f"{args.every} ({recorded} recorded steps), kinds baseline/full/block taking turns; "
        f"{size_mb:.0f} MB in {n_files} files, written in {built_s:.0f} s",
        "visit: Runs, then Dilution, Depth attention, Gradients of one run, Compare "
        "(default pair); one fresh process per visit",
        "server: VmHWM of the Streamlit server process (attnres-probe dashboard ROOT --port P,"
        " pages drawn in headless Chromium, browser not counted)",
        "apptest: VmHWM of a fresh process driving the dashboard script through AppTest",
        f"{'method':8s} {'ROOT':9s} {'peak RSS (median)':>18s} {'min..max':>16s} "
        f"{'RSS after':>10s} {'visit s':>8s} {'figures':>8s}  exceptions",
    ]
    medians, spread = {}, 0
    for (method, label), rows in results.items():
        peaks = [r["peak_kib"] for r in rows]
        medians[(method, label)] = statistics.median(peaks)
        spread = max(spread, max(peaks) - min(peaks))
        lines.append(
            f"{method:8s} {label:9s} {mib(statistics.median(peaks)):>18s} "
            f"{mib(min(peaks)) + '..' + mib(max(peaks)):>16s} "
            f"{mib(statistics.median(r['rss_kib'] for r in rows)):>10s} "
            f"{statistics.median(r['seconds'] for r in rows):>8.1f} "
            f"{rows[0]['figures']:>8d}  {sum(len(r['problems']) for r in rows)}"
        )
    for method in methods:
        many = medians[(method, f"{args.runs} runs")]
        drawn = medians[(method, "2 runs")] - medians[(method, "empty")]
        listed = (many - medians[(method, "2 runs")]) / (args.runs - 2)
        lines.append(
            f"{method}: {args.runs} runs add {mib(many - medians[(method, 'empty')])} to the "
            f"idle peak: {mib(drawn)} for drawing the pages at all (2 runs), then "
            f"{listed / 1024:+.2f} MiB per further run listed (repeats of one visit differ "
            f"by up to {mib(spread)})"
        )
    print("\n".join(lines))
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text("\n".join(lines) + "\n")
    failed = any(r["problems"] for rows in results.values() for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
