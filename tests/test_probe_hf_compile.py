"""A compiled Hugging Face Llama under the probe: no graph break added, no recompile after the
first recorded and the first unrecorded step, and the values eager gives."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from probe_checks import read_run
from torch._dynamo.utils import counters

from attnres_probe.hooks import probe

pytest.importorskip("transformers")

from hf_models import batch, build, train  # noqa: E402

RECORDED = (
    "loss", "hidden_rms", "update_rms", "grad_norm", "param_grad_norm", "cos_in_out",
    "layer_output_rms", "layer_grad_norm",
)  # fmt: skip


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("every", [1, 10])
def test_a_compiled_llama_records_what_eager_does_without_graph_breaks_or_recompiles(
    every, tmp_path
):
    steps = 3 if every == 1 else 12
    batches = [batch(i) for i in range(steps)]
    model = build("llama", n_layers=1)  # one layer: the hooks are the same, compiling is faster
    eager = copy.deepcopy(model)
    with probe(eager, tmp_path / "eager", every=every) as p:
        train(eager, p, batches)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend="aot_eager")
    seen = []
    with probe(compiled, tmp_path / "compiled", every=every) as p:  # attached before the first call
        for tokens in batches:
            train(compiled, p, [tokens])
            seen.append(graphs())
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    settled = 1 if every == 1 else 2  # the first recorded step, then the first unrecorded one
    assert seen[settled - 1] >= 1 and seen[-1] == seen[settled - 1], seen
    want, got = read_run(tmp_path / "eager"), read_run(tmp_path / "compiled")
    assert got["step"].values.tolist() == list(range(0, steps, every))
    assert np.isfinite(got["grad_norm"].values).all()
    for name in RECORDED:
        np.testing.assert_allclose(got[name].values, want[name].values, rtol=1e-5, err_msg=name)
