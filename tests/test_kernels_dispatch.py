"""Routing of the ops to the Triton kernels, and the kernels under autocast."""

import pytest
import torch
from kernel_checks import assert_close, fresh_seed

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
    with torch.autocast("cpu", torch.bfloat16):
        amp = call(dispatch_triton)
        amp_ref = call(reference)
    for out, out_plain, out_ref in zip(amp, plain, amp_ref, strict=True):
        assert out.dtype == out_ref.dtype
        torch.testing.assert_close(out, out_plain, rtol=0, atol=0)  # fp32 math either way
        assert_close(out.float(), out_ref.float(), 1e-2, op)


def test_forcing_triton_sends_cpu_tensors_through_the_interpreted_kernels(monkeypatch):
    calls = []
    monkeypatch.setattr(dispatch_triton, "attnres", lambda *a: calls.append(a) or ("out", "w"))
    sources, query = torch.randn(3, 4, 8), torch.randn(8)
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
        slots = ops.StatsSlots(n_sites=2, n_sources=6)
        with ops.recording(slots):
            ops.attnres(sources, query, site=1)
        sums[backend] = slots
    for name in ("depth_weight_sum", "source_rms_sum", "depth_entropy_sum"):
        tri, ref = getattr(sums["triton"], name), getattr(sums["reference"], name)
        torch.testing.assert_close(tri, ref, rtol=1e-5, atol=1e-5)
    assert sums["triton"].depth_tokens == [0, 21]
