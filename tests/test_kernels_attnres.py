"""Full AttnRes kernel against the reference, through the Triton interpreter."""

import pytest
import torch
from kernel_checks import (
    DTYPES,
    TOLERANCE,
    assert_close,
    fresh_seed,
    outputs_and_grads,
    reference_outputs_and_grads,
)

from attnres_probe.kernels import dispatch_triton, launch, reference
from attnres_probe.kernels.reference import DepthStats

# (N sources, *tokens, D): one source and one token; token counts that are not multiples of
# the tile; two token dims; odd widths.
SHAPES = [(1, 1, 8), (3, 70, 33), (9, 2, 5, 97), (5, 17, 64)]


@pytest.fixture(autouse=True)
def _seed():
    fresh_seed()


def _stats(n: int) -> DepthStats:
    return DepthStats(torch.zeros(n), torch.zeros(1))


def _sources(shape, dtype):
    # Sources of different magnitudes, as depth produces. A unit-normal query already gives
    # logits of spread ~sqrt(D), i.e. peaked weights; larger ones make ∂L/∂query a near-total
    # cancellation that float32 cannot resolve to 1e-5 in either implementation.
    scale = torch.rand(shape[0], *[1] * (len(shape) - 1)) * 3 + 0.1
    return (torch.randn(shape) * scale).to(dtype), torch.randn(shape[-1])


@pytest.mark.parametrize("with_stats", [True, False], ids=["stats", "no-stats"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_attnres_matches_reference_forward_and_gradients(shape, dtype, with_stats):
    tol = TOLERANCE[dtype]
    sources, query = _sources(shape, dtype)
    stats = _stats(shape[0]) if with_stats else None
    with launch.poisoned_outputs():
        (out, weights), (d_src, d_q), upstream = outputs_and_grads(
            lambda s, q: dispatch_triton.attnres(s, q, 1e-6, stats), (sources, query)
        )
    (out_ref, w_ref), (d_src_ref, d_q_ref) = reference_outputs_and_grads(
        lambda s, q: reference.attnres(s, q, 1e-6), (sources, query), upstream
    )
    assert_close(out, out_ref, tol, "out")
    assert_close(weights, w_ref, TOLERANCE[torch.float32], "weights (float32 from any input)")
    assert_close(d_src, d_src_ref, tol, "dsources")
    assert_close(d_q, d_q_ref, tol, "dquery")
    if not with_stats:
        return

    # Statistics against torch, computed apart from either implementation.
    s64 = sources.double()
    rms = s64.pow(2).mean(-1).add(1e-6).sqrt().flatten(1)  # [N, tokens]
    w64 = torch.softmax((s64 * query.double()).sum(-1).flatten(1) / rms, dim=0)
    entropy = -(w64 * w64.log()).nan_to_num(0.0).sum()
    assert_close(stats.weight_sum, w64.sum(1).float(), 1e-5, "Σα")
    # Near-one-hot weights have entropies near 0, where only an absolute bound means much.
    n_tokens = rms.shape[1]
    torch.testing.assert_close(
        stats.entropy_sum, entropy.float().reshape(1), rtol=1e-4, atol=1e-5 * n_tokens
    )


def test_gradient_into_the_returned_weights_reaches_sources_and_query():
    sources, query = _sources((4, 3, 11, 40), torch.float32)
    upstream = [torch.zeros(3, 11, 40), torch.randn(4, 3, 11)]  # only the weights carry loss
    _, (d_src, d_q), _ = outputs_and_grads(dispatch_triton.attnres, (sources, query), upstream)
    _, (d_src_ref, d_q_ref) = reference_outputs_and_grads(
        reference.attnres, (sources, query), upstream
    )
    assert d_q.abs().sum() > 0
    assert_close(d_src, d_src_ref, 1e-5, "dsources")
    assert_close(d_q, d_q_ref, 1e-5, "dquery")


def test_a_query_orthogonal_to_nothing_gives_weights_that_sum_to_one_and_stats_per_token():
    sources, query = _sources((6, 2, 9, 24), torch.float32)
    stats = _stats(6)
    _, weights = dispatch_triton.attnres(sources, query, 1e-6, stats)
    torch.testing.assert_close(weights.sum(0), torch.ones(2, 9))
    # Σ_sources Σ_tokens α = number of tokens.
    torch.testing.assert_close(stats.weight_sum.sum(), torch.tensor(18.0))
    assert 0 < stats.entropy_sum.item() <= 18 * torch.log(torch.tensor(6.0)).item() + 1e-4


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, on NaN
def test_nan_and_inf_sources_make_their_tokens_nan_and_nothing_crashes():
    sources, query = _sources((4, 7, 33), torch.float32)
    sources[2, 1, 5] = float("nan")
    sources[0, 4, 0] = float("inf")
    s = sources.clone().requires_grad_()
    out, weights = dispatch_triton.attnres(s, query, 1e-6, _stats(4))
    out.sum().backward()
    out_ref, w_ref = reference.attnres(sources, query)
    assert torch.equal(torch.isnan(out), torch.isnan(out_ref))
    assert torch.equal(torch.isnan(weights), torch.isnan(w_ref))
    assert torch.isnan(out[1]).all() and torch.isnan(out[4]).all()
    clean = [0, 2, 3, 5, 6]
    torch.testing.assert_close(out[clean], out_ref[clean])
    assert torch.isfinite(s.grad[:, clean]).all()


def test_reference_gradients_pass_gradcheck_in_float64():
    sources = torch.randn(4, 3, 7, dtype=torch.float64, requires_grad=True)
    query = torch.randn(7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, q: reference.attnres(s, q), (sources, query))


def test_the_reference_takes_each_sources_inverse_rms_from_the_caller_unchanged():
    sources, query = _sources((5, 3, 7, 24), torch.float32)
    s1, s2 = sources.clone().requires_grad_(), sources.clone().requires_grad_()
    out1, w1 = reference.attnres(s1, query)
    out2, w2 = reference.attnres(s2, query, 1e-6, None, reference.inv_rms(s2))
    torch.testing.assert_close(out2, out1, rtol=0, atol=0)
    torch.testing.assert_close(w2, w1, rtol=0, atol=0)
    g = torch.randn_like(out1)
    out1.backward(g)
    out2.backward(g)
    torch.testing.assert_close(s2.grad, s1.grad, rtol=1e-6, atol=1e-7)


def test_float64_inputs_run_on_the_float64_reference():
    sources = torch.randn(3, 5, 16, dtype=torch.float64)
    query = torch.randn(16, dtype=torch.float64)
    out, weights = dispatch_triton.attnres(sources, query)
    ref_out, ref_w = reference.attnres(sources, query)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    torch.testing.assert_close(weights, ref_w, rtol=0, atol=0)


def test_triton_on_a_cpu_tensor_without_the_interpreter_names_the_fix(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        dispatch_triton.attnres(torch.randn(2, 3, 8, device="cpu"), torch.randn(8, device="cpu"))
