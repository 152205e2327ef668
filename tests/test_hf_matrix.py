"""Hugging Face architectures from tiny random configs, each recorded for two training steps and
compared with the model's own hidden states and plain-autograd gradients (float64), or refused
with its reason."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from probe_checks import read_run

from attnres_probe.hooks import LayerDiscoveryError, ProbeWarning, probe

pytest.importorskip("transformers")

from hf_models import ARCHS, REFUSED, batch, build, reference, train  # noqa: E402

COMPARED = (
    "loss", "hidden_rms", "update_rms", "grad_norm", "param_grad_norm", "layer_output_rms",
    "layer_grad_norm", "cos_in_out",
)  # fmt: skip


@pytest.mark.parametrize("name", list(ARCHS))
def test_each_architecture_records_what_its_own_hidden_states_and_gradients_say(name, tmp_path):
    model = build(name)
    batches = [batch(0), batch(1)]
    expected = [reference(model, name, batches[0])]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProbeWarning)  # the wiring check passes without a word
        with probe(model, tmp_path / "run") as p:
            train(model, p, batches[:1])
            expected.append(reference(model, name, batches[1]))
            train(model, p, batches[1:])
    ds = read_run(tmp_path / "run")
    assert ds.sizes["sublayer"] == 2 * ds.sizes["layer"]
    for step in (0, 1):
        for variable in COMPARED:
            got = ds[variable].sel(step=step).values.astype(np.float64)
            want = expected[step][variable]
            err = np.abs(got - want) / np.maximum(np.abs(want), 1e-12)
            assert np.all(err <= 1e-4), f"{name} {variable} step {step}: {got} vs {want}"


@pytest.mark.parametrize("name", list(REFUSED))
def test_encoders_and_post_layernorm_layers_are_refused_with_the_reason(name, tmp_path):
    model = build(name)
    reason = REFUSED[name][2]
    with pytest.raises(LayerDiscoveryError, match=reason):
        with probe(model, tmp_path / "run") as p:
            train(model, p, [batch(0)])
