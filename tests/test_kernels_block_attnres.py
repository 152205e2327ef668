"""Two-phase Block AttnRes kernels against the reference, through the Triton interpreter."""

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

# (n completed blocks, token dims, D, S queries): one block, one token and one query; token
# counts that are not multiples of the tile; two token dims; odd widths; 8 blocks.
CASES = [(1, (1,), 8, 1), (3, (70,), 33, 4), (4, (2, 5), 97, 3), (8, (17,), 64, 2)]


@pytest.fixture(autouse=True)
def _seed():
    fresh_seed()


def _inputs(n, tokens, d, s, dtype):
    scale = torch.rand(n, *[1] * len(tokens), 1) * 3 + 0.1
    blocks = (torch.randn(n, *tokens, d) * scale).to(dtype)
    partial = (torch.randn(*tokens, d) * 2).to(dtype)
    return blocks, torch.randn(s, d), partial


def _stats(n: int, with_partial: bool) -> DepthStats:
    z = torch.zeros
    return DepthStats(z(n), z(1), z(1) if with_partial else None)


def _block(ops, stats):
    """One block of S sublayers: phase 1, then phase 2 for each sublayer, the first without a
    partial sum. Returns every output so that each carries a random upstream gradient."""

    def run(blocks, queries, partial):
        out1, lse1, logits1 = ops.block_attnres_phase1(blocks, queries)
        outs = [out1, lse1, logits1]
        for s in range(queries.shape[0]):
            merged, weights = ops.block_attnres_phase2(
                out1[s], lse1[s], logits1[s], partial if s else None, queries[s], 1e-6, stats[s]
            )
            outs += [merged, weights]
        return outs

    return run


@pytest.mark.parametrize("with_stats", [True, False], ids=["stats", "no-stats"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_both_phases_match_reference_forward_and_gradients(case, dtype, with_stats):
    n, tokens, d, s = case
    tol = TOLERANCE[dtype]
    inputs = _inputs(n, tokens, d, s, dtype)
    stats = [_stats(n, i > 0) if with_stats else None for i in range(s)]
    stats_ref = [_stats(n, i > 0) for i in range(s)]
    with launch.poisoned_outputs():
        outs, grads, upstream = outputs_and_grads(_block(dispatch_triton, stats), inputs)
    outs_ref, grads_ref = reference_outputs_and_grads(
        _block(reference, [None] * s), inputs, upstream
    )
    outputs_and_grads(_block(reference, stats_ref), inputs, upstream)  # its statistics
    names = ["phase1 out", "phase1 lse", "phase1 logits"]
    names += [f"{k} {i}" for i in range(s) for k in ("out", "w")]
    for name, o, o_ref in zip(names, outs, outs_ref, strict=True):
        # lse and weights are float32 whatever the input dtype.
        assert_close(o, o_ref, tol if o.dtype == dtype else TOLERANCE[torch.float32], name)
    for name, g, g_ref in zip(("dblocks", "dqueries", "dpartial"), grads, grads_ref, strict=True):
        if g_ref is None:  # one sublayer: the partial sum is never used
            assert g is None, name
        else:
            assert_close(g, g_ref, tol, name)
    if not with_stats:
        return
    n_tokens = inputs[2][..., 0].numel()
    for i, (st, st_ref) in enumerate(zip(stats, stats_ref, strict=True)):
        assert_close(st.weight_sum, st_ref.weight_sum, 1e-5, f"weight_sum {i}")
        # Near-one-hot weights have entropies near 0, where only an absolute bound means much.
        torch.testing.assert_close(
            st.entropy_sum, st_ref.entropy_sum, rtol=1e-4, atol=1e-5 * n_tokens
        )
        if i:
            assert_close(st.partial_weight_sum, st_ref.partial_weight_sum, 1e-5, f"pw {i}")


def test_phase2_statistics_equal_torch_over_blocks_and_partial():
    blocks, queries, partial = _inputs(3, (4, 6), 40, 2, torch.float32)
    out1, lse1, logits1 = dispatch_triton.block_attnres_phase1(blocks, queries)
    stats = _stats(3, True)
    dispatch_triton.block_attnres_phase2(
        out1[1], lse1[1], logits1[1], partial, queries[1], 1e-6, stats
    )
    # Torch, apart from either implementation: softmax over [blocks..., partial] in float64.
    src = torch.cat([blocks, partial[None]]).double().flatten(1, 2)  # [n+1, tokens, D]
    rms = src.pow(2).mean(-1).add(1e-6).sqrt()
    w = torch.softmax((src * queries[1].double()).sum(-1) / rms, dim=0)
    entropy = -(w * w.log()).sum()
    assert_close(stats.weight_sum, w[:3].sum(1).float(), 1e-5, "Σα blocks")
    assert_close(stats.partial_weight_sum, w[3].sum().float().reshape(1), 1e-5, "Σα partial")
    assert_close(stats.entropy_sum, entropy.float().reshape(1), 1e-4, "ΣH")


def test_first_sublayer_of_a_block_returns_phase1_output_itself_and_a_zero_partial_row():
    blocks, queries, _ = _inputs(2, (3, 4), 16, 2, torch.float32)
    out1, lse1, logits1 = dispatch_triton.block_attnres_phase1(blocks, queries)
    out, weights = dispatch_triton.block_attnres_phase2(
        out1[0], lse1[0], logits1[0], None, queries[0]
    )
    assert out.data_ptr() == out1[0].data_ptr()
    assert (weights[-1] == 0).all()
    torch.testing.assert_close(weights[:-1].sum(0), torch.ones(3, 4))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, on NaN
def test_nan_and_inf_in_blocks_or_partial_make_their_tokens_nan_and_nothing_crashes():
    blocks, queries, partial = _inputs(3, (8,), 33, 2, torch.float32)
    blocks[1, 2, 7] = float("nan")
    blocks[0, 5, 0] = float("inf")
    partial[6, 3] = float("nan")
    b = blocks.clone().requires_grad_()
    outs = _block(dispatch_triton, [None, None])(b, queries, partial)
    outs_ref = _block(reference, [None, None])(blocks, queries, partial)
    sum(o.sum() for o in outs).backward()
    for o, o_ref in zip(outs, outs_ref, strict=True):
        assert torch.equal(torch.isnan(o), torch.isnan(o_ref))
    merged = outs[-2]
    assert torch.isnan(merged[[2, 5, 6]]).all()
    clean = [0, 1, 3, 4, 7]
    torch.testing.assert_close(merged[clean], outs_ref[-2][clean])
    assert torch.isfinite(b.grad[:, clean]).all()


def test_reference_phases_pass_gradcheck_in_float64():
    blocks = torch.randn(3, 2, 4, 6, dtype=torch.float64, requires_grad=True)
    queries = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    partial = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)

    def both(b, q, p):
        out1, lse1, logits1 = reference.block_attnres_phase1(b, q)
        out, weights = reference.block_attnres_phase2(out1[1], lse1[1], logits1[1], p, q[1])
        return out1, lse1, out, weights

    assert torch.autograd.gradcheck(both, (blocks, queries, partial))
