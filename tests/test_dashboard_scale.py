"""The dashboard over a ROOT of 50 runs: the Runs page lists every one without an error.

The runs come from the dashboard memory benchmark's builder (benchmarks/dashboard_memory.py),
made tiny here; the benchmark measures the memory of the same listing at full size.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from attnres_probe.app.confine import ROOT_ENV

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "app" / "dashboard.py"
SCRIPT = REPO / "benchmarks" / "dashboard_memory.py"
N_RUNS = 50


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("dashboard_memory", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def fifty_runs(bench, tmp_path_factory):
    root = tmp_path_factory.mktemp("fifty")
    return root, bench.build_runs(root, N_RUNS, n_layers=2, steps=20, every=2)


def shown_problems(at: AppTest) -> list[str]:
    return [e.message for e in at.exception] + [e.value for e in (*at.error, *at.warning)]


def test_the_runs_page_lists_fifty_runs_without_an_error(fifty_runs, monkeypatch):
    root, names = fifty_runs
    monkeypatch.setenv(ROOT_ENV, str(root))
    at = AppTest.from_file(str(DASHBOARD), default_timeout=120)
    at.run()
    assert not shown_problems(at), shown_problems(at)
    table = at.dataframe[0].value.set_index("run")
    assert sorted(table.index) == sorted(names)
    assert set(table["state"]) == {"finished"} and set(table["recorded steps"]) == {10}
    assert at.sidebar.selectbox(key="run").options == sorted(names)
    (loss,) = at.get("plotly_chart")
    assert len(json.loads(loss.proto.spec)["data"]) == 12  # the first 12 runs' losses
    assert "first 12 of 50 runs" in " ".join(c.value for c in at.caption)
    at.switch_page("views/compare.py").run()
    assert not shown_problems(at), shown_problems(at)
    assert len(at.get("plotly_chart")) == 8
