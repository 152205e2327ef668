"""Whole models on the Triton kernels (interpreted) against the reference backend."""

import contextlib

import pytest
import torch
from kernel_checks import DEVICE, fresh_seed, rel_err
from torch.utils.checkpoint import checkpoint

from attnres_probe import ops
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
    """(logits, {parameter: grad}, StatsSlots) of one recorded forward + backward."""
    monkeypatch.setenv("ATTNRES_PROBE_KERNELS", backend)
    cfg = model.cfg
    slots = ops.StatsSlots(cfg.n_sublayers + 1, max(1, len(cfg.source_names)), DEVICE)
    model.zero_grad(set_to_none=True)
    amp = torch.autocast(DEVICE.type, torch.bfloat16) if autocast else contextlib.nullcontext()
    with ops.recording(slots), amp:
        logits = checkpoint(model, idx, use_reentrant=False) if use_checkpoint else model(idx)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), idx.flatten())
    loss.backward()
    slots.settle()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return logits.detach(), grads, slots


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


def _assert_same_stats(slots, slots_ref):
    for name in ("norm_sq", "depth_weight_sum", "source_rms_sum"):
        torch.testing.assert_close(
            getattr(slots, name), getattr(slots_ref, name), rtol=1e-4, atol=0
        )
    # Stream gradients carry the same cancellations as the parameter gradients (see below).
    torch.testing.assert_close(slots.norm_grad_sq, slots_ref.norm_grad_sq, rtol=1e-3, atol=0)
    tokens = max(slots_ref.depth_tokens)
    torch.testing.assert_close(
        slots.depth_entropy_sum, slots_ref.depth_entropy_sum, rtol=1e-4, atol=1e-5 * tokens
    )
    assert (slots.norm_numel, slots.depth_tokens) == (slots_ref.norm_numel, slots_ref.depth_tokens)


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
    # Recomputation re-runs the forward ops, so both backends count them twice, alike.
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
def test_recording_open_through_a_checkpointed_backward_gives_the_plain_means(kind):
    """The probe keeps its recording open across backward, where checkpointing re-runs the
    forward ops: sums and their counts both grow, so every mean stays the plain run's, and the
    stream gradients are still taken once."""
    model = _model(kind)
    idx = torch.randint(0, 256, (2, 13))
    cfg = model.cfg

    def recorded(use_checkpoint):
        slots = ops.StatsSlots(cfg.n_sublayers + 1, max(1, len(cfg.source_names)), DEVICE)
        model.zero_grad(set_to_none=True)
        with ops.recording(slots):
            logits = checkpoint(model, idx, use_reentrant=False) if use_checkpoint else model(idx)
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx.flatten()).backward()
        slots.settle()
        tokens = torch.tensor(slots.depth_tokens).clamp(min=1)
        return {
            "hidden mean square": slots.norm_sq / torch.tensor(slots.norm_numel),
            "stream gradient": slots.norm_grad_sq,
            "depth weights": slots.depth_weight_sum / tokens[:, None],
            "depth entropy": slots.depth_entropy_sum / tokens,
        }

    plain, checkpointed = recorded(False), recorded(True)
    for name, value in plain.items():
        torch.testing.assert_close(checkpointed[name], value, rtol=1e-5, atol=1e-7, msg=name)
