"""The kernel benchmark script: importable and runnable without a GPU."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "kernels.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("kernels_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA it would run the benchmark")
def test_without_cuda_it_says_so_and_measures_nothing(bench, capsys, tmp_path):
    assert bench.main(["--out", str(tmp_path)]) == 2
    assert "needs CUDA" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_dry_run_times_every_implementation_and_writes_json_and_markdown(bench, tmp_path):
    args = ["--dry-run", "--ops", "phase2", "--no-sweep", "--no-step"]
    assert bench.main([*args, "--out", str(tmp_path)]) == 0
    (json_path,) = tmp_path.glob("*.json")
    data = json.loads(json_path.read_text())
    assert data["header"]["dry_run"] is True and data["header"]["torch"] == torch.__version__
    rows = data["rows"]
    seen = {(r["op"], r["impl"], r["stats"], r["pass_"]) for r in rows}
    for impl in ("triton", "eager"):
        for stats in (False, True):
            for pass_ in ("fwd", "bwd", "fwd+bwd"):
                assert ("block phase 2", impl, stats, pass_) in seen
    assert all(r["note"] == "" and r["ms"] > 0 and r["min_bytes"] > 0 for r in rows)
    markdown = json_path.with_suffix(".md").read_text()
    assert "DRY RUN" in markdown and "| block phase 2 |" in markdown
