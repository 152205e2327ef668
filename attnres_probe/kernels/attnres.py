"""Full AttnRes aggregation: Triton kernels, launchers (custom ops), autograd Function.

Replaces ``reference.attnres``. Per token, over N sources v_i [D] and one query q [D]:

    r_i = sqrt(mean(v_i²) + eps)      z_i = q·v_i / r_i      α = softmax_i(z)      out = Σ α_i v_i

The forward reads every source once (online softmax over depth); the RMS values, the softmax
weights and their entropy are already in registers, so the statistics (``reference.DepthStats``)
cost a few register adds and one atomic add per source per program.

Backward, with g = ∂L/∂out and gw_i = ∂L/∂α_i:

    dα_i = g·v_i + gw_i        dz_i = α_i (dα_i − Σ_j α_j dα_j)
    ∂L/∂v_i = α_i g + dz_i (q / r_i − z_i v_i / (D r_i²))        ∂L/∂q = Σ_tokens Σ_i dz_i v_i / r_i
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from attnres_probe.kernels import launch
from attnres_probe.kernels.launch import cast_to


@triton.jit
def _attnres_fwd_kernel(
    src_ptr,
    q_ptr,
    out_ptr,
    w_ptr,
    wsum_ptr,
    ent_ptr,
    N,
    M,
    D,
    stride_n,
    eps,
    HAS_STATS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    n_progs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < D
    src_idx = tl.arange(0, BLOCK_N)
    src_mask = src_idx < N
    q = tl.load(q_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    wsum_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    ent_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    for tile in range(pid, tl.cdiv(M, BLOCK_M), n_progs):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = rows < M
        mask = row_mask[:, None] & col_mask[None, :]
        offs = rows.to(tl.int64)[:, None] * D + cols[None, :]
        run_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        run_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        logits = tl.full([BLOCK_N, BLOCK_M], float("-inf"), dtype=tl.float32)
        src_i = src_ptr  # advanced by a pointer step: i·M·D may not fit in int32
        for i in range(N):
            v = tl.load(src_i + offs, mask=mask, other=0.0).to(tl.float32)
            src_i = src_i + stride_n
            rms = tl.sqrt(tl.sum(v * v, axis=1) / D + eps)
            z = tl.sum(v * q[None, :], axis=1) / rms  # [BLOCK_M]
            logits = tl.where(src_idx[:, None] == i, z[None, :], logits)
            new_max = tl.maximum(run_max, z)
            scale = tl.exp(run_max - new_max)
            p = tl.exp(z - new_max)
            run_sum = run_sum * scale + p
            acc = acc * scale[:, None] + p[:, None] * v
            run_max = new_max
        out = acc / run_sum[:, None]
        tl.store(out_ptr + offs, cast_to(out, out_ptr.dtype.element_ty), mask=mask)
        # exp(z − max) / Σ rather than exp(z − lse): z − max is exact for the largest logits,
        # so the weights sum to 1 as closely as torch.softmax's (the backward relies on it).
        alpha = tl.exp(logits - run_max[None, :]) / run_sum[None, :]  # padded sources get 0
        valid = src_mask[:, None] & row_mask[None, :]
        tl.store(w_ptr + src_idx[:, None].to(tl.int64) * M + rows[None, :], alpha, mask=valid)
        if HAS_STATS:
            wsum_acc += tl.sum(tl.where(valid, alpha, 0.0), axis=1)
            lse = run_max + tl.log(run_sum)
            log_alpha = tl.where(valid, logits - lse[None, :], 0.0)
            plogp = tl.where(alpha > 0, alpha * log_alpha, 0.0)
            ent_acc -= tl.sum(plogp, axis=0)
    if HAS_STATS:
        tl.atomic_add(wsum_ptr + src_idx, wsum_acc, mask=src_mask)
        tl.atomic_add(ent_ptr, tl.sum(ent_acc, axis=0))


@triton.jit
def _attnres_bwd_kernel(
    src_ptr,
    q_ptr,
    w_ptr,
    dout_ptr,
    dw_ptr,
    dsrc_ptr,
    dq_part_ptr,
    N,
    M,
    D,
    stride_n,
    eps,
    HAS_DW: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    n_progs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < D
    q = tl.load(q_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    dq_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for tile in range(pid, tl.cdiv(M, BLOCK_M), n_progs):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = rows < M
        mask = row_mask[:, None] & col_mask[None, :]
        offs = rows.to(tl.int64)[:, None] * D + cols[None, :]
        g = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        # Pass 1: Σ_j α_j dα_j. Pass 2 re-reads each source (an L2 hit for a tile this size).
        delta = tl.zeros([BLOCK_M], dtype=tl.float32)
        src_i = src_ptr
        w_i = w_ptr
        dw_i = dw_ptr
        for _ in range(N):
            v = tl.load(src_i + offs, mask=mask, other=0.0).to(tl.float32)
            alpha = tl.load(w_i + rows, mask=row_mask, other=0.0)
            d_alpha = tl.sum(g * v, axis=1)
            if HAS_DW:
                d_alpha += tl.load(dw_i + rows, mask=row_mask, other=0.0)
            delta += alpha * d_alpha
            src_i = src_i + stride_n
            w_i = w_i + M
            dw_i = dw_i + M
        src_i = src_ptr
        dsrc_i = dsrc_ptr
        w_i = w_ptr
        dw_i = dw_ptr
        for _ in range(N):
            v = tl.load(src_i + offs, mask=mask, other=0.0).to(tl.float32)
            alpha = tl.load(w_i + rows, mask=row_mask, other=0.0)
            rms = tl.sqrt(tl.sum(v * v, axis=1) / D + eps)
            z = tl.sum(v * q[None, :], axis=1) / rms
            d_alpha = tl.sum(g * v, axis=1)
            if HAS_DW:
                d_alpha += tl.load(dw_i + rows, mask=row_mask, other=0.0)
            dz = alpha * (d_alpha - delta)
            dv = alpha[:, None] * g + dz[:, None] * (
                q[None, :] / rms[:, None] - (z / (rms * rms * D))[:, None] * v
            )
            tl.store(dsrc_i + offs, cast_to(dv, dsrc_ptr.dtype.element_ty), mask=mask)
            dq_acc += tl.sum((dz / rms)[:, None] * v, axis=0)
            src_i = src_i + stride_n
            dsrc_i = dsrc_i + stride_n
            w_i = w_i + M
            dw_i = dw_i + M
    tl.store(dq_part_ptr + pid.to(tl.int64) * D + cols, dq_acc, mask=col_mask)


def _tiles(m: int, d: int, device: torch.device) -> tuple[int, int, int, int]:
    bd = launch.block_d(d)
    bm = launch.block_m(bd)
    return bd, bm, launch.n_programs(triton.cdiv(m, bm), device), launch.num_warps(bm * bd)


def attnres_forward(
    sources: torch.Tensor,
    query: torch.Tensor,
    eps: float,
    weight_sum: torch.Tensor | None = None,
    entropy_sum: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """sources [N, M, D] contiguous, query [D] -> (out [M, D], weights [N, M] float32).

    When the float32 slots weight_sum [N] and entropy_sum [1] are given, they receive
    Σ_tokens α_i and Σ_tokens H(α).
    """
    launch.check_launchable(sources, query)
    n, m, d = sources.shape
    if n == 0:
        raise ValueError("attnres needs at least one source (sources.shape[0] == 0)")
    bd, bm, g, warps = _tiles(m, d, sources.device)
    out = launch.empty((m, d), sources.dtype, sources.device)
    weights = launch.empty((n, m), torch.float32, sources.device)
    has_stats = weight_sum is not None
    _attnres_fwd_kernel[(g,)](
        sources,
        query,
        out,
        weights,
        weight_sum if has_stats else weights,
        entropy_sum if has_stats else weights,
        n,
        m,
        d,
        m * d,
        eps,
        HAS_STATS=has_stats,
        BLOCK_N=triton.next_power_of_2(n),
        BLOCK_M=bm,
        BLOCK_D=bd,
        num_warps=warps,
    )
    return out, weights


def attnres_backward(
    sources: torch.Tensor,
    query: torch.Tensor,
    weights: torch.Tensor,
    dout: torch.Tensor,
    dweights: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """sources [N, M, D], weights [N, M], dout [M, D], dweights [N, M] or None
    -> (dsources [N, M, D] in sources' dtype, dquery [D] in query's dtype)."""
    n, m, d = sources.shape
    bd, bm, g, warps = _tiles(m, d, sources.device)
    dsources = launch.empty(sources.shape, sources.dtype, sources.device)
    dq_part = launch.empty((g, d), torch.float32, sources.device)
    _attnres_bwd_kernel[(g,)](
        sources,
        query,
        weights,
        dout,
        dweights if dweights is not None else weights,
        dsources,
        dq_part,
        n,
        m,
        d,
        m * d,
        eps,
        HAS_DW=dweights is not None,
        BLOCK_M=bm,
        BLOCK_D=bd,
        num_warps=warps,
    )
    return dsources, dq_part.sum(0).to(query.dtype)


# The launchers as custom ops (see ``launch.custom_op``): what the autograd Function calls.
attnres_fwd = launch.custom_op("attnres_fwd", mutates_args=("weight_sum", "entropy_sum"))(
    attnres_forward
)
attnres_bwd = launch.custom_op("attnres_bwd")(attnres_backward)


@attnres_fwd.register_fake
def _(sources, query, eps, weight_sum=None, entropy_sum=None):
    n, m, d = sources.shape
    return sources.new_empty((m, d)), sources.new_empty((n, m), dtype=torch.float32)


@attnres_bwd.register_fake
def _(sources, query, weights, dout, dweights, eps):
    return sources.new_empty(sources.shape), query.new_empty(query.shape)


class AttnResFunction(torch.autograd.Function):
    """(sources [N, *, D], query [D]) -> (out [*, D], weights [N, *] float32)."""

    @staticmethod
    def forward(ctx, sources, query, eps, weight_sum, entropy_sum):
        n, *token_shape, d = sources.shape
        src = sources.reshape(n, -1, d).contiguous()
        out, weights = attnres_fwd(src, query.contiguous(), eps, weight_sum, entropy_sum)
        ctx.save_for_backward(src, query, weights)
        ctx.set_materialize_grads(False)
        ctx.eps = eps
        ctx.shape = sources.shape
        return out.view(*token_shape, d), weights.view(n, *token_shape)

    @staticmethod
    @once_differentiable  # a kernel launch: a second derivative would be wrong, so none
    def backward(ctx, dout, dweights):
        src, query, weights = ctx.saved_tensors
        n, m, d = src.shape
        if dout is None:
            dout = torch.zeros((m, d), dtype=src.dtype, device=src.device)
        dsrc, dq = attnres_bwd(
            src,
            query.contiguous(),
            weights,
            dout.reshape(m, d).contiguous(),
            None if dweights is None else dweights.reshape(n, m).contiguous(),
            ctx.eps,
        )
        return dsrc.view(ctx.shape), dq, None, None, None
