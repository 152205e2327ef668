"""The run schema is declared once: the docs, the synthetic runs, the coordinates and the
model's depth sources all follow the declaration."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from attnres_probe import open_run
from attnres_probe.models import ModelConfig, build_model
from attnres_probe.store.schema import VARIABLES, recorded_variables, variables_table
from attnres_probe.store.synthetic import write_run

DOCS = Path(__file__).resolve().parents[1] / "docs" / "probe.md"


def test_the_docs_variable_table_is_the_schema_declaration():
    text = DOCS.read_text()
    found = re.search(r"<!-- schema:start -->\n(.*?)\n<!-- schema:end -->", text, re.S)
    assert found, "docs/probe.md lost its schema markers"
    assert found.group(1) == variables_table()


def test_every_kind_records_the_shared_variables_and_only_attnres_the_depth_ones():
    base, full = recorded_variables("baseline"), recorded_variables("full")
    assert set(base) < set(full) == set(recorded_variables("block")) == set(VARIABLES)
    assert not any(name.startswith(("depth_", "query_")) for name in base)
    with pytest.raises(ValueError, match="residual='post'"):
        recorded_variables("post")


@pytest.mark.parametrize("residual", ["baseline", "full", "block"])
def test_a_synthetic_run_holds_every_variable_its_kind_records_with_units(tmp_path, residual):
    cfg = ModelConfig(residual=residual, n_layers=4, d_model=16, n_heads=2, n_blocks=4)
    write_run(tmp_path / "run", cfg, n_steps=3)
    ds = open_run(tmp_path / "run")
    assert set(ds.data_vars) == set(recorded_variables(residual))
    for name, var in VARIABLES.items():
        if name in ds:
            assert ds[name].dims == var.dims
            assert ds[name].attrs["long_name"] == var.long_name
            assert ds[name].attrs["units"] == var.units
    assert list(ds.kind.values) == ["attn", "mlp"] * 4
    assert list(ds.layer_of.values) == [0, 0, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("residual,n_blocks", [("full", 4), ("block", 4), ("block", 2)])
def test_the_config_names_exactly_the_sources_each_depth_op_receives(residual, n_blocks):
    cfg = ModelConfig(residual=residual, n_layers=4, d_model=16, n_heads=2, n_blocks=n_blocks)
    model = build_model(cfg)
    with torch.no_grad():  # non-zero queries, so every existing source gets its own weight
        for q in model.depth_queries:
            q.query.normal_()
    captured: list[torch.Tensor] = []
    model(torch.randint(0, cfg.vocab_size, (2, 5)), depth_weights_out=captured)
    per_token = model.depth_weights(torch.randint(0, cfg.vocab_size, (2, 5)))
    mask = cfg.source_mask()
    assert len(captured) == cfg.n_sublayers + 1 == mask.shape[0]
    for site, w in enumerate(captured):
        columns = cfg.sources_at(site)
        # the op's weights over the sources it has sum to one; a missing partial sum weighs 0
        assert torch.allclose(w[: len(columns)].sum(0), torch.ones(2, 5), atol=1e-5)
        assert torch.all(w[len(columns) :] == 0)
        assert np.array_equal(mask[site], np.isin(np.arange(mask.shape[1]), columns))
        assert torch.isnan(per_token[site, ~torch.from_numpy(mask[site])]).all()
        assert not torch.isnan(per_token[site, list(columns)]).any()
