"""A 100k-step, 96-sublayer run opens and draws its first figure within 3 s (slow: not in CI).

The runs are written with the store's RunWriter; each measurement is a fresh Python process
(cold caches) driving the dashboard through AppTest. Run with:

    .venv/bin/pytest -m slow tests/test_app_large.py -s
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_app_runs import record

from attnres_probe.models.config import ModelConfig

DASHBOARD = Path(__file__).resolve().parents[1] / "app" / "dashboard.py"
N_STEPS = 100_000
BUDGET_S = 3.0

# In a fresh process: first the dashboard's own start (its imports, on an empty ROOT), then
# the 100k run opened on the Runs page until its loss figure is drawn, then the switch to
# `page` until its figures are drawn. The caches are cold for the run throughout.
MEASURE = """
import json, os, sys, tempfile, time
root, run, page, dashboard = sys.argv[1:5]
t0 = time.perf_counter()
from streamlit.testing.v1 import AppTest
os.environ["ATTNRES_PROBE_ROOT"] = tempfile.mkdtemp()
at = AppTest.from_file(dashboard, default_timeout=120)
at.run()
t1 = time.perf_counter()
os.environ["ATTNRES_PROBE_ROOT"] = root  # read afresh on every script run
at.query_params["run"] = run
at.run()
t2 = time.perf_counter()
runs_figures = len(at.get("plotly_chart"))
at.switch_page(f"views/{page}.py").run()
t3 = time.perf_counter()
print(json.dumps({
    "dashboard_start_s": round(t1 - t0, 2), "runs_page_s": round(t2 - t1, 2),
    "runs_figures": runs_figures, "page_s": round(t3 - t2, 2),
    "page_figures": len(at.get("plotly_chart")),
    "exceptions": [e.message for e in at.exception],
}))
"""


@pytest.fixture(scope="module")
def big_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("big")
    for residual in ("baseline", "block"):
        cfg = ModelConfig(residual=residual, n_layers=48, d_model=64, n_heads=2, n_blocks=8)
        assert cfg.n_sublayers == 96
        record(root / f"{residual}-100k", cfg, N_STEPS, flush_every=1024)
    return root


@pytest.mark.slow
@pytest.mark.parametrize(
    "run,page,n_figures",
    [
        ("baseline-100k", "dilution", 4),
        ("baseline-100k", "gradients", 4),
        ("block-100k", "depth_attention", 2),
        ("block-100k", "compare", 8),
    ],
)
def test_a_100k_step_96_sublayer_run_draws_its_first_figure_within_3_s(
    big_root, run, page, n_figures
):
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(big_root), run, page, str(DASHBOARD)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\n{run} {page}: {json.dumps({k: v for k, v in result.items() if k != 'exceptions'})}")
    assert not result["exceptions"]
    assert result["runs_figures"] == 1 and result["page_figures"] == n_figures
    assert result["runs_page_s"] <= BUDGET_S  # open the run, draw the loss of 100k steps
    assert result["runs_page_s"] + result["page_s"] <= BUDGET_S  # ... and the page's figures
