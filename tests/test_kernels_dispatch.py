"""Routing of the ops to the Triton kernels, and the kernels under autocast."""

import pytest
import torch
from kernel_checks import DEVICE, assert_close, fresh_seed

from attnres_probe import ops
from attnres_probe.kernels import dispatch_triton, reference


@pytest.fixture(autouse=True)
def _seed():
    fresh_seed()


def _calls(blocks, queries, partial, stream, update, weight):
    """Every op once: name -> callable(module) returning a tuple of tensors."""
    return {
        "rms_norm": lambda m: (m.rms_norm(stream, weight),),
        "add_rms_norm": lambda m: m.add_rms_norm(stream, update, weight),
        "attnres": lambda m: m.attnres(torch.cat([blocks, partial[None]]), queries[0]),
        "block_attnres": lambda m: (
            *(p1 := m.block_attnres_phase1(blocks, queries)),
            *m.block_attnres_phase2(blocks, p1[0][1], p1[1][1], partial, queries[1]),
        ),
    }


def _inputs():
    d = 40
    return (
        torch.randn(3, 2, 6, d),  # blocks: float32, as the stacked embedding makes them
        torch.randn(2, d),  # queries (parameters stay float32 under autocast)
        torch.randn(2, 6, d).bfloat16(),  # partial: a sum of bfloat16 sublayer outputs
        torch.randn(2, 6, d),  # stream
        torch.randn(2, 6, d).bfloat16(),  # update
        torch.randn(d),  # norm weight
    )


@pytest.mark.parametrize("op", ["rms_norm", "add_rms_norm", "attnres", "block_attnres"])
def test_under_bf16_autocast_each_op_returns_the_reference_dtypes_and_unchanged_values(op):
    call = _calls(*_inputs())[op]
    plain = call(dispatch_triton)
    with torch.autocast(DEVICE.type, torch.bfloat16):
        amp = call(dispatch_triton)
        amp_ref = call(reference)
    for out, out_plain, out_ref in zip(amp, plain, amp_ref, strict=True):
        assert out.dtype == out_ref.dtype
        torch.testing.assert_close(out, out_plain, rtol=0, atol=0)  # fp32 math either way
        assert_close(out.float(), out_ref.float(), 1e-2, op)


def test_forcing_triton_sends_cpu_tensors_through_the_interpreted_kernels(monkeypatch):
    calls = []
    monkeypatch.setattr(dispatch_triton, "attnres", lambda *a: calls.append(a) or ("out", "w"))
    sources, query = torch.randn(3, 4, 8, device="cpu"), torch.randn(8, device="cpu")
    monkeypatch.setenv("ATTNRES_PROBE_KERNELS", "triton")
    assert ops.kernel_backend(sources) == "triton"
    assert ops.attnres(sources, query) == ("out", "w") and len(calls) == 1
    monkeypatch.setenv("ATTNRES_PROBE_KERNELS", "reference")
    ops.attnres(sources, query)
    monkeypatch.delenv("ATTNRES_PROBE_KERNELS")
    assert ops.kernel_backend(sources) == "reference"  # auto: CPU tensors take the reference
    ops.attnres(sources, query)
    assert len(calls) == 1


def test_ops_statistics_on_triton_equal_the_reference_backend(monkeypatch):
    sources, query = torch.randn(5, 3, 7, 33), torch.randn(33)
    sums = {}
    for backend in ("triton", "reference"):
        monkeypatch.setenv("ATTNRES_PROBE_KERNELS", backend)
        slots = ops.StatsSlots(n_sites=2, n_sources=6, device=DEVICE)
        with ops.recording(slots):
            ops.attnres(sources, query, site=1)
        sums[backend] = slots
    for name in ("depth_weight_sum", "source_rms_sum", "depth_entropy_sum"):
        tri, ref = getattr(sums["triton"], name), getattr(sums["reference"], name)
        torch.testing.assert_close(tri, ref, rtol=1e-5, atol=1e-5)
    assert sums["triton"].depth_tokens == [0, 21]


def _norm_input_grads(x: torch.Tensor, weight: torch.Tensor, upstream) -> tuple[float, float]:
    """Σ(∂L/∂h)² and Σ(∂L/∂x)² for the graph of the test below, in plain float64 torch."""
    x = x.detach().double().requires_grad_()
    h = x * 2
    loss = sum(
        (torch.nn.functional.rms_norm(t, (t.shape[-1],), weight.double(), 1e-6) * u).sum()
        for t, u in ((h, upstream[0]), (x, upstream[1]))
    )
    loss = loss + (h * upstream[2]).sum()  # h has a second consumer: its gradient is the total
    gh, gx = torch.autograd.grad(loss, [h, x])
    return gh.pow(2).sum().item(), gx.pow(2).sum().item()


@pytest.mark.parametrize("norm_grads", [True, False])
def test_norm_gradient_statistic_is_settled_for_streams_and_hooked_for_leaves(
    monkeypatch, norm_grads
):
    monkeypatch.setenv("ATTNRES_PROBE_KERNELS", "reference")
    x = torch.randn(3, 5, 16, requires_grad=True)
    weight = torch.randn(16)
    upstream = [torch.randn(3, 5, 16) for _ in range(3)]
    slots = ops.StatsSlots(n_sites=2, n_sources=1, device=DEVICE, norm_grads=norm_grads)
    with ops.recording(slots):
        h = x * 2  # a stream (non-leaf): its gradient is retained and reduced at settle()
        y_h = ops.rms_norm(h, weight, site=0)
        y_x = ops.rms_norm(x, weight, site=1)  # a leaf: a tensor hook adds it as it comes
    ((y_h * upstream[0]).sum() + (y_x * upstream[1]).sum() + (h * upstream[2]).sum()).backward()
    expected_h, expected_x = _norm_input_grads(x, weight, upstream)
    if not norm_grads:
        assert not h.retains_grad
        slots.settle()
        assert slots.norm_grad_sq.tolist() == [0.0, 0.0]
        return
    assert h.retains_grad and slots.norm_grad_sq[0].item() == 0.0  # pending until settle()
    torch.testing.assert_close(slots.norm_grad_sq[1].item(), expected_x, rtol=1e-5, atol=0)
    slots.settle()
    torch.testing.assert_close(slots.norm_grad_sq[0].item(), expected_h, rtol=1e-5, atol=0)
    assert h.grad is None  # the retained gradient is released once reduced
    slots.settle()  # nothing left: settling again adds nothing
    torch.testing.assert_close(slots.norm_grad_sq[0].item(), expected_h, rtol=1e-5, atol=0)
