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
            *m.block_attnres_phase2(p1[0][1], p1[1][1], p1[2][1], partial, queries[1]),
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


def _recording(n_sources: int, grads: bool = False) -> ops.Recording:
    """A two-site recording: site 1's depth op reads ``n_sources`` sources."""
    sums = {"norm_sq": (2,), "depth_weight_sum": (2, 6), "depth_entropy_sum": (2,)}
    if grads:
        sums["norm_grad_sq"] = (2,)
    return ops.Recording(
        sums,
        {"depth_tokens": 2},
        ["norm_grad_sq"] if grads else [],
        device=DEVICE,
        sources_at=lambda site: tuple(range(n_sources if site == 1 else 1)),
        n_sites=2,
        norm_grads=grads,
    )


def test_ops_statistics_on_triton_equal_the_reference_backend(monkeypatch):
    sources, query = torch.randn(5, 3, 7, 33), torch.randn(33)
    recs = {}
    for backend in ("triton", "reference"):
        monkeypatch.setenv("ATTNRES_PROBE_KERNELS", backend)
        recs[backend] = rec = _recording(5)
        ops.attnres(sources, query, rec=rec, site=1)
    for name in ("depth_weight_sum", "depth_entropy_sum"):
        tri, ref = recs["triton"].views[name], recs["reference"].views[name]
        torch.testing.assert_close(tri, ref, rtol=1e-5, atol=1e-5)
    assert recs["triton"].views["depth_weight_sum"][1].sum().item() == pytest.approx(21, 1e-5)


def _stream_grad_sq(x, update, weight, upstream) -> float:
    """Σ(∂L/∂h)² for h = x + update with two consumers (its norm and the caller), in plain
    float64 torch."""
    x, update = x.detach().double(), update.detach().double()
    h = (x + update).requires_grad_()
    y = torch.nn.functional.rms_norm(h, (h.shape[-1],), weight.double(), 1e-6)
    loss = (y * upstream[0]).sum() + (h * upstream[1]).sum()
    (gh,) = torch.autograd.grad(loss, [h])
    return gh.pow(2).sum().item()


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_the_stream_gradient_of_a_fused_add_norm_counts_every_consumer(monkeypatch, backend):
    monkeypatch.setenv("ATTNRES_PROBE_KERNELS", backend)
    x = torch.randn(3, 5, 16, requires_grad=True)
    update = torch.randn(3, 5, 16, requires_grad=True)
    weight = torch.randn(16)
    upstream = [torch.randn(3, 5, 16) for _ in range(2)]
    rec = _recording(1, grads=True)
    y, h = ops.add_rms_norm(x, update, weight, rec=rec, site=1)
    ((y * upstream[0]).sum() + (h * upstream[1]).sum()).backward()
    rec.settle()
    expected = _stream_grad_sq(x, update, weight, upstream)
    torch.testing.assert_close(rec.views["norm_grad_sq"][1].item(), expected, rtol=1e-5, atol=0)
    assert rec.views["norm_grad_sq"][0].item() == 0.0
    assert rec.count_views["norm_grad_sq_hits"].tolist() == [0, 1]


def test_no_gradient_statistic_without_a_backward_or_when_not_asked(monkeypatch):
    monkeypatch.setenv("ATTNRES_PROBE_KERNELS", "reference")
    x, update, weight = (
        torch.randn(2, 3, 8, requires_grad=True),
        torch.randn(2, 3, 8),
        torch.ones(8),
    )
    rec = _recording(1, grads=True)
    with torch.no_grad():
        ops.add_rms_norm(x, update, weight, rec=rec, site=1)
    ops.add_rms_norm(x, update, weight, rec=rec, site=1)  # a forward without backward
    rec.settle()
    assert not rec.backward_seen and rec.count_views["norm_grad_sq_hits"].tolist() == [0, 0]
    plain = _recording(1)
    y, _ = ops.add_rms_norm(x, update, weight, rec=plain, site=1)
    y.sum().backward()
    plain.settle()
    assert "norm_grad_sq" not in plain.views and not plain.backward_seen
