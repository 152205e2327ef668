"""The AttnRes op: an independent float64 formula, weights that sum to 1, gradients everywhere."""

import pytest
import torch

from attnres_probe import ops


def attnres_float64(sources: torch.Tensor, query: torch.Tensor, eps: float = 1e-6):
    """The paper's formula, written out independently in float64 with explicit loops over N."""
    s = sources.double()
    q = query.double()
    n = s.shape[0]
    logits = []
    for i in range(n):
        key = s[i] / torch.sqrt((s[i] ** 2).mean(-1, keepdim=True) + eps)
        logits.append((key * q).sum(-1))
    logits = torch.stack(logits)
    weights = torch.exp(logits - logits.max(0).values)
    weights = weights / weights.sum(0)
    out = sum(weights[i].unsqueeze(-1) * s[i] for i in range(n))
    return out, weights


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("shape", [(1, 1, 8), (3, 5, 33), (7, 2, 3, 97), (9, 17, 64)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_op_equals_an_independent_float64_formula(shape, dtype, tol):
    sources = (torch.randn(shape) * torch.rand(shape[0], *[1] * (len(shape) - 1)) * 3).to(dtype)
    query = torch.randn(shape[-1]).to(dtype)
    out, weights = ops.attnres(sources, query)
    ref_out, ref_w = attnres_float64(sources, query)
    assert out.shape == shape[1:] and out.dtype == dtype
    assert weights.shape == shape[:-1]
    assert _rel(out, ref_out) < tol
    assert _rel(weights, ref_w) < tol


def test_weights_sum_to_one_over_sources():
    sources = torch.randn(6, 4, 11, 37)
    _, weights = ops.attnres(sources, torch.randn(37) * 4)
    torch.testing.assert_close(weights.sum(0), torch.ones(4, 11))
    assert (weights >= 0).all()


def test_zero_query_gives_the_plain_mean_of_sources():
    sources = torch.randn(5, 3, 16)
    out, weights = ops.attnres(sources, torch.zeros(16))
    torch.testing.assert_close(out, sources.mean(0))
    torch.testing.assert_close(weights, torch.full((5, 3), 0.2))


def test_gradients_reach_query_and_every_source_in_float64():
    sources = torch.randn(4, 3, 7, dtype=torch.float64, requires_grad=True)
    query = torch.randn(7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, q: ops.attnres(s, q)[0], (sources, query))
    out, _ = ops.attnres(sources, query)
    out.square().sum().backward()
    assert query.grad.abs().sum() > 0
    assert all(sources.grad[i].abs().sum() > 0 for i in range(4))


def test_two_phase_block_op_equals_attnres_over_blocks_and_partial():
    blocks = torch.randn(3, 2, 5, 19)
    partial = torch.randn(2, 5, 19)
    queries = torch.randn(4, 19)
    phase1_out, phase1_lse, phase1_logits = ops.block_attnres_phase1(blocks, queries)
    for s in range(4):
        out, weights = ops.block_attnres_phase2(
            phase1_out[s], phase1_lse[s], phase1_logits[s], partial, queries[s]
        )
        ref_out, ref_w = attnres_float64(torch.cat([blocks, partial[None]]), queries[s])
        assert _rel(out, ref_out) < 1e-5
        assert _rel(weights, ref_w) < 1e-5
    out, weights = ops.block_attnres_phase2(
        phase1_out[0], phase1_lse[0], phase1_logits[0], None, queries[0]
    )
    ref_out, ref_w = attnres_float64(blocks, queries[0])
    assert _rel(out, ref_out) < 1e-5
    assert _rel(weights[:3], ref_w) < 1e-5 and (weights[3] == 0).all()


def test_the_reference_op_over_a_list_of_sources_has_right_second_derivatives():
    """Its backward is written out: differentiated again (create_graph=True) it must still give
    the second derivatives of the formula, numerically checked in float64."""
    from attnres_probe.kernels import reference

    sources = [torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    query = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(
        lambda q, *s: reference.attnres_over_sources(list(s), q)[0], (query, *sources)
    )
