"""Whole models on the Triton kernels (interpreted) against the reference backend."""

import contextlib

import pytest
import torch
from kernel_checks import DEVICE, fresh_seed, rel_err
from torch.utils.checkpoint import checkpoint

from attnres_probe.hooks.taps import native_recording
from attnres_probe.models.config import ModelConfig
from attnres_probe.models.model import build_model

KINDS = ["baseline", "full", "block"]


@pytest.fixture(autouse=True)
def _seed():
    fresh_seed()


def _model(kind: str) -> torch.nn.Module:
    cfg = ModelConfig(residual=kind, n_layers=2, d_model=32, n_heads=2, n_blocks=2, max_seq_len=16)
    model = build_model(cfg)
    with torch.no_grad():  # trained-looking depth queries, so the weights are not uniform
        for name, p in model.named_parameters():
            if name.endswith(".query"):
                p.normal_(0.0, 0.5)
    return model


def _run(model, idx, backend, monkeypatch, *, use_checkpoint=False, autocast=False):
    """(logits, {parameter: grad}, Recording) of one recorded forward + backward."""
    monkeypatch.setenv("ATTNRES_PROBE_KERNELS", backend)
    rec = model.recording = native_recording(model)
    model.zero_grad(set_to_none=True)
    amp = torch.autocast(DEVICE.type, torch.bfloat16) if autocast else contextlib.nullcontext()
    try:
        with amp:
            logits = checkpoint(model, idx, use_reentrant=False) if use_checkpoint else model(idx)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), idx.flatten())
        loss.backward()
    finally:
        model.recording = None
    rec.settle()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return logits.detach(), grads, rec


def _assert_same(run, run_ref, tol, tol_each_grad):
    """Logits and the whole gradient (all parameters as one vector) within ``tol``; each
    parameter's gradient within ``tol_each_grad``."""
    (logits, grads, _), (logits_ref, grads_ref, _) = run, run_ref
    err = rel_err(logits, logits_ref)
    assert err < tol, f"logits: relative error {err:.3g}"
    flat = torch.cat([grads[name].flatten() for name in grads_ref])
    err = rel_err(flat, torch.cat([g.flatten() for g in grads_ref.values()]))
    assert err < tol, f"gradient of all parameters: relative error {err:.3g}"
    for name, g_ref in grads_ref.items():
        err = rel_err(grads[name], g_ref)
        assert err < tol_each_grad, f"grad of {name}: relative error {err:.3g}"


def _assert_same_stats(rec, rec_ref):
    for name, value in rec_ref.views.items():
        if name in ("norm_grad_sq", "grad_sq"):
            # Stream gradients carry the same cancellations as the parameter gradients.
            rtol, atol = 1e-3, 0.0
        elif name == "depth_entropy_sum":
            rtol, atol = 1e-4, 1e-5 * int(rec_ref.count_views["depth_tokens"].max())
        else:
            rtol, atol = 1e-4, 1e-6
        torch.testing.assert_close(rec.views[name], value, rtol=rtol, atol=atol, msg=name)
    assert torch.equal(rec.counts, rec_ref.counts)


@pytest.mark.parametrize("kind", KINDS)
def test_model_on_triton_kernels_matches_the_reference_backend(kind, monkeypatch):
    model = _model(kind)
    idx = torch.randint(0, 256, (2, 11))
    run = _run(model, idx, "triton", monkeypatch)
    run_ref = _run(model, idx, "reference", monkeypatch)
    # Float32 throughout. A depth query's gradient is a sum over sources and tokens of terms
    # that cancel (softmax gradients sum to zero), so each backend alone is off from a float64
    # run by up to ~1e-4 on it; hence the looser bound for single parameters.
    _assert_same(run, run_ref, 1e-5, 1e-3)
    _assert_same_stats(run[2], run_ref[2])


@pytest.mark.parametrize("kind", KINDS)
def test_checkpointed_model_on_triton_kernels_matches_the_plain_reference(kind, monkeypatch):
    model = _model(kind)
    idx = torch.randint(0, 256, (2, 7))
    run = _run(model, idx, "triton", monkeypatch, use_checkpoint=True)
    _assert_same(run, _run(model, idx, "reference", monkeypatch), 1e-5, 1e-3)
    _assert_same_stats(run[2], _run(model, idx, "reference", monkeypatch, use_checkpoint=True)[2])


@pytest.mark.parametrize("kind", KINDS)
def test_model_under_bf16_autocast_on_triton_kernels_matches_the_reference_backend(
    kind, monkeypatch
):
    model = _model(kind)
    idx = torch.randint(0, 256, (2, 9))
    run = _run(model, idx, "triton", monkeypatch, autocast=True)
    run_ref = _run(model, idx, "reference", monkeypatch, autocast=True)
    assert run[0].dtype == run_ref[0].dtype == torch.bfloat16
    _assert_same(run, run_ref, 1e-2, 1e-2)


@pytest.mark.parametrize("kind", KINDS)
def test_a_checkpointed_backward_adds_each_statistic_once_like_the_plain_run(kind, monkeypatch):
    """Checkpointing re-runs the forward inside the backward pass; the recomputation adds no
    forward statistic a second time, and every gradient statistic is taken once."""
    model = _model(kind)
    idx = torch.randint(0, 256, (2, 13))
    plain = _run(model, idx, "reference", monkeypatch)[2]
    checkpointed = _run(model, idx, "reference", monkeypatch, use_checkpoint=True)[2]
    for name, value in plain.views.items():
        torch.testing.assert_close(checkpointed.views[name], value, rtol=1e-5, atol=1e-7, msg=name)
    assert torch.equal(checkpointed.counts, plain.counts)
    assert plain.count_views["backward_passes"].item() == 1
