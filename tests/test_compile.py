"""This project's models compile whole — with and without the probe — and record under
``torch.compile`` exactly what they record eagerly."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch._dynamo as dynamo
from probe_checks import read_run, train_steps
from torch._dynamo.utils import counters

from attnres_probe.hooks import probe
from attnres_probe.models import ModelConfig, build_model

KINDS = ["baseline", "full", "block"]


def _model(kind: str, n_layers: int = 2, d_model: int = 32) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(
        residual=kind, n_layers=n_layers, d_model=d_model, n_heads=2, n_blocks=2, max_seq_len=16
    )
    model = build_model(cfg)
    with torch.no_grad():  # off the init: non-uniform depth weights, non-trivial updates
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _batches(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 256, (2, 13), generator=g) for _ in range(n)]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    dynamo.reset()
    counters.clear()
    yield
    dynamo.reset()


@pytest.mark.parametrize(
    "kind,every",
    [(kind, 3) for kind in KINDS]
    + [pytest.param(kind, 1, marks=pytest.mark.slow) for kind in KINDS],
)
def test_the_probe_adds_no_graph_break_and_records_what_eager_records(kind, every, tmp_path):
    """Whole-graph compile (fullgraph=True) of a recorded and an unrecorded step, each once."""
    model = _model(kind)
    eager = copy.deepcopy(model)
    batches = _batches(7)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with probe(model, tmp_path / "compiled", every=every) as p:
        train_steps(compiled, p, batches)
    # One graph for recorded steps, one for unrecorded ones: no recompile after those.
    assert counters["stats"]["unique_graphs"] == (1 if every == 1 else 2)
    assert not counters["graph_break"]
    with probe(eager, tmp_path / "eager", every=every) as p:
        train_steps(eager, p, batches)
    got, want = read_run(tmp_path / "compiled"), read_run(tmp_path / "eager")
    assert got["step"].values.tolist() == want["step"].values.tolist() == list(range(0, 7, every))
    assert set(got.data_vars) == set(want.data_vars)
    for name in want.data_vars:
        np.testing.assert_allclose(
            got[name].values, want[name].values, rtol=1e-5, atol=1e-7, err_msg=name
        )
    assert np.isfinite(got["grad_norm"].values).all()


@pytest.mark.slow  # inductor generates and builds C++: minutes on a 2-core machine
def test_a_model_compiled_with_inductor_records_what_eager_records(tmp_path):
    model = _model("block", n_layers=1, d_model=16)
    eager = copy.deepcopy(model)
    batches = _batches(3)
    compiled = torch.compile(model, fullgraph=True)  # inductor: generated C++ on the CPU
    with probe(model, tmp_path / "compiled", every=2) as p:
        train_steps(compiled, p, batches)
    with probe(eager, tmp_path / "eager", every=2) as p:
        train_steps(eager, p, batches)
    got, want = read_run(tmp_path / "compiled"), read_run(tmp_path / "eager")
    for name in want.data_vars:
        np.testing.assert_allclose(
            got[name].values, want[name].values, rtol=1e-4, atol=1e-6, err_msg=name
        )
    assert not counters["graph_break"]
