"""The bundled sample runs: they open, are what sample_runs/README.md says, and the README's
claims table is what the claims command computes from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnres_probe.cli import app
from attnres_probe.store import SCHEMA_VERSION, open_run
from attnres_probe.tools.claims import claims_for_folder, find_runs, marked_block

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_runs"
RUNS = find_runs(SAMPLES) if SAMPLES.is_dir() else {}
pytestmark = pytest.mark.skipif(
    not RUNS, reason="sample_runs/ holds no runs; make them with scripts/make_sample_runs.py"
)


@pytest.fixture(scope="module")
def datasets():
    return {name: open_run(path) for name, path in RUNS.items()}


def test_every_sample_run_opens_with_the_schema_version_and_seed_0_keeps_its_weights(datasets):
    from attnres_probe.checkpoint import load_model

    for name, ds in datasets.items():
        assert int(ds.attrs["schema_version"]) == SCHEMA_VERSION, name
        assert ds.attrs["status"] == "finished", name
        seed = json.loads(ds.attrs["train_config"])["seed"]
        assert (RUNS[name] / "checkpoint.safetensors").is_file() == (seed == 0), name
        assert "prune_loss" in ds.data_vars and "prune_path_loss" in ds.data_vars, name
        if seed == 0:  # the kept weights load, paired with this recording
            assert load_model(RUNS[name]).cfg.residual == ds.attrs["residual"]


def test_sample_runs_are_equal_size_deep_long_and_seeded_as_promised(datasets):
    kinds: dict[str, set[int]] = {}
    sizes = set()
    for name, ds in datasets.items():
        model = json.loads(ds.attrs["model_config"])
        train = json.loads(ds.attrs["train_config"])
        sizes.add((model["n_layers"], model["d_model"], model["n_heads"], model["n_blocks"]))
        assert model["n_layers"] >= 32, name
        assert train["steps"] >= 1000 and int(ds["step"].values[-1]) >= 990, name
        kinds.setdefault(ds.attrs["residual"], set()).add(train["seed"])
    assert len(sizes) == 1, f"sample runs differ in size: {sizes}"
    assert len(kinds["baseline"]) >= 3 and len(kinds["block"]) >= 3 and kinds["full"]


def test_every_run_is_pruned_at_the_granularities_and_removals_promised(datasets):
    pruned_by_sublayer = set()
    for name, ds in datasets.items():
        kind = ds.attrs["residual"]
        granularity, removal = ds["prune_granularity"].values, ds["prune_removal"].values
        done = set(zip(granularity.tolist(), removal.tolist(), strict=True))
        removals = {"mask", "zero"} if kind != "baseline" else {"zero"}
        granularities = {"layer"} | ({"block"} if kind == "block" else set())
        assert {(g, r) for g in granularities for r in removals} <= done, name
        if any(g == "sublayer" for g, _ in done):
            assert {("sublayer", r) for r in removals} <= done, name
            pruned_by_sublayer.add(kind)
    assert pruned_by_sublayer == {"baseline", "full", "block"}


def test_sample_runs_folder_stays_under_30_mb():
    size = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file())
    assert size < 30 * 2**20, f"sample_runs/ is {size / 2**20:.1f} MiB"


def test_readme_claims_table_is_what_the_runs_give():
    readme = REPO / "README.md"
    assert marked_block(readme.read_text(encoding="utf-8")) == claims_for_folder(SAMPLES)
    result = CliRunner().invoke(app, ["claims", str(SAMPLES), "--check-readme", str(readme)])
    assert result.exit_code == 0, result.output
