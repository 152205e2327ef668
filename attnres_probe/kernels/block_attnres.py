"""Block AttnRes in two phases: Triton kernels, launchers (custom ops), autograd Functions.

Replaces ``reference.block_attnres_phase1`` / ``reference.block_attnres_phase2``.

Phase 1 (once per block, for its S sublayers): one read of the n completed block
representations b_i [D] serves all S queries q_s:

    r_i = sqrt(mean(b_i²) + eps)    z_si = q_s·b_i / r_i    lse_s = logsumexp_i z_si
    out_s = Σ_i exp(z_si − lse_s) b_i

Besides (out, lse) it returns the logits z [S, n, *]: phase 2 turns them into the per-block
weights and statistics without reading the blocks again.

Phase 2 (per sublayer): online-softmax merge with the intra-block partial sum p:

    b = q·p / r_p    u = logaddexp(lse, b)    out = e^(lse−u) out₁ + e^(b−u) p
    weights = [e^(z_i − u) for each block, e^(b − u)]          (partial sum's row last)

Phase-1 backward, with g_s = ∂L/∂out_s, α_si = exp(z_si − lse_s):

    dz_si = α_si (g_s·b_i − Σ_j α_sj g_s·b_j) + α_si ∂L/∂lse_s + ∂L/∂z_si
    ∂L/∂b_i = Σ_s α_si g_s + (Σ_s dz_si q_s) / r_i − (Σ_s dz_si z_si) b_i / (D r_i²)
    ∂L/∂q_s = Σ_tokens Σ_i dz_si b_i / r_i
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from attnres_probe.kernels import launch
from attnres_probe.kernels.launch import cast_to


@triton.jit
def _phase1_fwd_kernel(
    blk_ptr,
    q_ptr,
    out_ptr,
    lse_ptr,
    logit_ptr,
    NB,
    S,
    M,
    D,
    stride_n,
    eps,
    BLOCK_S: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    n_progs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < D
    s_idx = tl.arange(0, BLOCK_S)
    s_mask = s_idx < S
    queries = tl.load(
        q_ptr + s_idx[:, None] * D + cols[None, :],
        mask=s_mask[:, None] & col_mask[None, :],
        other=0.0,
    ).to(tl.float32)  # [BLOCK_S, BLOCK_D]
    for tile in range(pid, tl.cdiv(M, BLOCK_M), n_progs):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = rows < M
        mask = row_mask[:, None] & col_mask[None, :]
        offs = rows.to(tl.int64)[:, None] * D + cols[None, :]
        sm_mask = s_mask[:, None] & row_mask[None, :]
        # logits [S, n, M]: element (s, i, m) at (s·NB + i)·M + m
        logit_offs = s_idx[:, None].to(tl.int64) * NB * M + rows[None, :]
        run_max = tl.full([BLOCK_S, BLOCK_M], float("-inf"), dtype=tl.float32)
        run_sum = tl.zeros([BLOCK_S, BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_S, BLOCK_M, BLOCK_D], dtype=tl.float32)
        blk_i = blk_ptr
        logit_i = logit_ptr
        for _ in range(NB):
            v = tl.load(blk_i + offs, mask=mask, other=0.0).to(tl.float32)  # [BLOCK_M, BLOCK_D]
            rms = tl.sqrt(tl.sum(v * v, axis=1) / D + eps)
            z = tl.sum(queries[:, None, :] * v[None, :, :], axis=2) / rms[None, :]  # [S, M]
            tl.store(logit_i + logit_offs, z, mask=sm_mask)
            new_max = tl.maximum(run_max, z)
            scale = tl.exp(run_max - new_max)
            p = tl.exp(z - new_max)
            run_sum = run_sum * scale + p
            acc = acc * scale[:, :, None] + p[:, :, None] * v[None, :, :]
            run_max = new_max
            blk_i = blk_i + stride_n
            logit_i = logit_i + M
        out = acc / run_sum[:, :, None]
        out_offs = s_idx[:, None, None].to(tl.int64) * stride_n + offs[None, :, :]
        tl.store(
            out_ptr + out_offs,
            cast_to(out, out_ptr.dtype.element_ty),
            mask=s_mask[:, None, None] & mask[None, :, :],
        )
        tl.store(lse_ptr + s_idx[:, None] * M + rows[None, :], run_max + tl.log(run_sum), sm_mask)


@triton.jit
def _phase1_bwd_kernel(
    blk_ptr,
    q_ptr,
    logit_ptr,
    lse_ptr,
    dout_ptr,
    dlse_ptr,
    dlogit_ptr,
    dblk_ptr,
    dq_part_ptr,
    NB,
    S,
    M,
    D,
    stride_n,
    eps,
    HAS_DOUT: tl.constexpr,
    HAS_DLSE: tl.constexpr,
    HAS_DLOGIT: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    n_progs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < D
    s_idx = tl.arange(0, BLOCK_S)
    s_mask = s_idx < S
    sd_mask = s_mask[:, None] & col_mask[None, :]
    queries = tl.load(q_ptr + s_idx[:, None] * D + cols[None, :], mask=sd_mask, other=0.0).to(
        tl.float32
    )
    dq_acc = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32)
    for tile in range(pid, tl.cdiv(M, BLOCK_M), n_progs):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = rows < M
        mask = row_mask[:, None] & col_mask[None, :]
        offs = rows.to(tl.int64)[:, None] * D + cols[None, :]
        sm_mask = s_mask[:, None] & row_mask[None, :]
        sm_offs = s_idx[:, None] * M + rows[None, :]
        logit_offs = s_idx[:, None].to(tl.int64) * NB * M + rows[None, :]
        lse = tl.load(lse_ptr + sm_offs, mask=sm_mask, other=0.0)
        if HAS_DOUT:
            g = tl.load(
                dout_ptr + s_idx[:, None, None].to(tl.int64) * stride_n + offs[None, :, :],
                mask=s_mask[:, None, None] & mask[None, :, :],
                other=0.0,
            ).to(tl.float32)  # [BLOCK_S, BLOCK_M, BLOCK_D]
            # Pass 1: δ_s = Σ_j α_sj g_s·b_j. Pass 2 re-reads the blocks (an L2 hit).
            delta = tl.zeros([BLOCK_S, BLOCK_M], dtype=tl.float32)
            blk_i = blk_ptr
            logit_i = logit_ptr
            for _ in range(NB):
                v = tl.load(blk_i + offs, mask=mask, other=0.0).to(tl.float32)
                z = tl.load(logit_i + logit_offs, mask=sm_mask, other=0.0)
                alpha = tl.where(sm_mask, tl.exp(z - lse), 0.0)
                delta += alpha * tl.sum(g * v[None, :, :], axis=2)
                blk_i = blk_i + stride_n
                logit_i = logit_i + M
        if HAS_DLSE:
            dlse = tl.load(dlse_ptr + sm_offs, mask=sm_mask, other=0.0)
        blk_i = blk_ptr
        dblk_i = dblk_ptr
        logit_i = logit_ptr
        dlogit_i = dlogit_ptr
        for _ in range(NB):
            v = tl.load(blk_i + offs, mask=mask, other=0.0).to(tl.float32)
            rms = tl.sqrt(tl.sum(v * v, axis=1) / D + eps)
            z = tl.load(logit_i + logit_offs, mask=sm_mask, other=0.0)
            alpha = tl.where(sm_mask, tl.exp(z - lse), 0.0)  # [S, M]
            dz = tl.zeros([BLOCK_S, BLOCK_M], dtype=tl.float32)
            if HAS_DOUT:
                dz += alpha * (tl.sum(g * v[None, :, :], axis=2) - delta)
            if HAS_DLSE:
                dz += alpha * dlse
            if HAS_DLOGIT:
                dz += tl.load(dlogit_i + logit_offs, mask=sm_mask, other=0.0)
            dv = tl.sum(dz[:, :, None] * queries[:, None, :], axis=0) / rms[:, None]
            dv -= (tl.sum(dz * z, axis=0) / (rms * rms * D))[:, None] * v
            if HAS_DOUT:
                dv += tl.sum(alpha[:, :, None] * g, axis=0)
            tl.store(dblk_i + offs, cast_to(dv, dblk_ptr.dtype.element_ty), mask=mask)
            dq_acc += tl.sum(dz[:, :, None] * (v / rms[:, None])[None, :, :], axis=1)
            blk_i = blk_i + stride_n
            dblk_i = dblk_i + stride_n
            logit_i = logit_i + M
            dlogit_i = dlogit_i + M
    dq_offs = (pid * S + s_idx[:, None]).to(tl.int64) * D + cols[None, :]
    tl.store(dq_part_ptr + dq_offs, dq_acc, mask=sd_mask)


@triton.jit
def _phase2_fwd_kernel(
    o1_ptr,
    lse1_ptr,
    p_ptr,
    q_ptr,
    zb_ptr,
    out_ptr,
    w_ptr,
    wsum_ptr,
    ent_ptr,
    pwsum_ptr,
    NB,
    M,
    D,
    eps,
    HAS_PARTIAL: tl.constexpr,
    HAS_STATS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    n_progs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < D
    blk_idx = tl.arange(0, BLOCK_N)
    q = tl.load(q_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    wsum_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    ent_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    pw_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    for tile in range(pid, tl.cdiv(M, BLOCK_M), n_progs):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = rows < M
        mask = row_mask[:, None] & col_mask[None, :]
        offs = rows.to(tl.int64)[:, None] * D + cols[None, :]
        lse1 = tl.load(lse1_ptr + rows, mask=row_mask, other=0.0)
        if HAS_PARTIAL:
            o1 = tl.load(o1_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            pv = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            p_rms = tl.sqrt(tl.sum(pv * pv, axis=1) / D + eps)
            p_logit = tl.sum(pv * q[None, :], axis=1) / p_rms
            hi = tl.maximum(lse1, p_logit)
            lse = hi + tl.log(tl.exp(lse1 - hi) + tl.exp(p_logit - hi))
            keep = tl.exp(lse1 - lse)
            p_weight = tl.exp(p_logit - lse)
            out = keep[:, None] * o1 + p_weight[:, None] * pv
            tl.store(out_ptr + offs, cast_to(out, out_ptr.dtype.element_ty), mask=mask)
        else:
            lse = lse1
            p_weight = tl.zeros([BLOCK_M], dtype=tl.float32)
        valid = (blk_idx < NB)[:, None] & row_mask[None, :]
        nm_offs = blk_idx[:, None].to(tl.int64) * M + rows[None, :]
        z = tl.load(zb_ptr + nm_offs, mask=valid, other=0.0)  # [BLOCK_N, BLOCK_M]
        block_w = tl.where(valid, tl.exp(z - lse[None, :]), 0.0)
        weights = tl.where(blk_idx[:, None] == NB, p_weight[None, :], block_w)
        tl.store(w_ptr + nm_offs, weights, mask=(blk_idx <= NB)[:, None] & row_mask[None, :])
        if HAS_STATS:
            wsum_acc += tl.sum(block_w, axis=1)
            log_w = tl.where(valid, z - lse[None, :], 0.0)
            ent = -tl.sum(tl.where(block_w > 0, block_w * log_w, 0.0), axis=0)
            if HAS_PARTIAL:
                ent -= tl.where(p_weight > 0, p_weight * (p_logit - lse), 0.0)
                pw_acc += tl.where(row_mask, p_weight, 0.0)
            ent_acc += tl.where(row_mask, ent, 0.0)
    if HAS_STATS:
        blk_mask = blk_idx < NB
        tl.atomic_add(wsum_ptr + blk_idx, wsum_acc, mask=blk_mask)
        tl.atomic_add(ent_ptr, tl.sum(ent_acc, axis=0))
        if HAS_PARTIAL:
            tl.atomic_add(pwsum_ptr, tl.sum(pw_acc, axis=0))


@triton.jit
def _phase2_bwd_kernel(
    o1_ptr,
    lse1_ptr,
    p_ptr,
    q_ptr,
    zb_ptr,
    dout_ptr,
    dw_ptr,
    do1_ptr,
    dlse1_ptr,
    dp_ptr,
    dzb_ptr,
    dq_part_ptr,
    NB,
    M,
    D,
    eps,
    HAS_DOUT: tl.constexpr,
    HAS_DW: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Backward of the merge with a partial sum (the case without one is elementwise on [n, *])."""
    pid = tl.program_id(0)
    n_progs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < D
    blk_idx = tl.arange(0, BLOCK_N)
    q = tl.load(q_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    dq_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for tile in range(pid, tl.cdiv(M, BLOCK_M), n_progs):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = rows < M
        mask = row_mask[:, None] & col_mask[None, :]
        offs = rows.to(tl.int64)[:, None] * D + cols[None, :]
        lse1 = tl.load(lse1_ptr + rows, mask=row_mask, other=0.0)
        pv = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        p_rms = tl.sqrt(tl.sum(pv * pv, axis=1) / D + eps)
        p_logit = tl.sum(pv * q[None, :], axis=1) / p_rms
        hi = tl.maximum(lse1, p_logit)
        lse = hi + tl.log(tl.exp(lse1 - hi) + tl.exp(p_logit - hi))
        keep = tl.exp(lse1 - lse)
        p_weight = tl.exp(p_logit - lse)
        g_keep = tl.zeros([BLOCK_M], dtype=tl.float32)  # ∂L/∂keep
        g_pw = tl.zeros([BLOCK_M], dtype=tl.float32)  # ∂L/∂p_weight
        if HAS_DOUT:
            g = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            o1 = tl.load(o1_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            g_keep += tl.sum(g * o1, axis=1)
            g_pw += tl.sum(g * pv, axis=1)
        d_lse = -(keep * g_keep)
        if HAS_DW:
            valid = (blk_idx < NB)[:, None] & row_mask[None, :]
            nm_offs = blk_idx[:, None].to(tl.int64) * M + rows[None, :]
            z = tl.load(zb_ptr + nm_offs, mask=valid, other=0.0)
            block_w = tl.where(valid, tl.exp(z - lse[None, :]), 0.0)
            dw = tl.load(dw_ptr + nm_offs, mask=valid, other=0.0)
            tl.store(dzb_ptr + nm_offs, block_w * dw, mask=valid)
            d_lse -= tl.sum(block_w * dw, axis=0)
            g_pw += tl.load(dw_ptr + NB * M + rows, mask=row_mask, other=0.0)
        d_lse -= p_weight * g_pw
        # lse = logaddexp(lse1, p_logit): its gradient splits by the two softmax weights.
        d_lse1 = keep * (g_keep + d_lse)
        d_plogit = p_weight * (g_pw + d_lse)
        tl.store(dlse1_ptr + rows, d_lse1, mask=row_mask)
        dp = d_plogit[:, None] * (
            q[None, :] / p_rms[:, None] - (p_logit / (p_rms * p_rms * D))[:, None] * pv
        )
        if HAS_DOUT:
            dp += p_weight[:, None] * g
            tl.store(do1_ptr + offs, cast_to(keep[:, None] * g, do1_ptr.dtype.element_ty), mask)
        tl.store(dp_ptr + offs, cast_to(dp, dp_ptr.dtype.element_ty), mask=mask)
        dq_acc += tl.sum((d_plogit / p_rms)[:, None] * pv, axis=0)
    tl.store(dq_part_ptr + pid.to(tl.int64) * D + cols, dq_acc, mask=col_mask)


def _tiles(m: int, per_token: int, d: int, device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_D, BLOCK_M, programs, warps) for tiles of ``per_token`` float32 values a token."""
    bd = launch.block_d(d)
    bm = launch.block_m(per_token)
    warps = launch.num_warps(bm * per_token)
    return bd, bm, launch.n_programs(triton.cdiv(m, bm), device), warps


def phase1_forward(
    blocks: torch.Tensor, queries: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """blocks [n, M, D], queries [S, D] contiguous -> (out [S, M, D], lse [S, M],
    logits [S, n, M]); all but ``out`` float32."""
    launch.check_launchable(blocks, queries)
    nb, m, d = blocks.shape
    s = queries.shape[0]
    if nb == 0:
        raise ValueError("block_attnres_phase1 needs at least one completed block (got n=0)")
    bs = triton.next_power_of_2(s)
    bd, bm, g, warps = _tiles(m, bs * launch.block_d(d), d, blocks.device)
    dev = blocks.device
    out = launch.empty((s, m, d), blocks.dtype, dev)
    lse = launch.empty((s, m), torch.float32, dev)
    logits = launch.empty((s, nb, m), torch.float32, dev)
    _phase1_fwd_kernel[(g,)](
        blocks, queries, out, lse, logits, nb, s, m, d, m * d, eps,
        BLOCK_S=bs, BLOCK_M=bm, BLOCK_D=bd, num_warps=warps,
    )  # fmt: skip
    return out, lse, logits


def phase1_backward(
    blocks: torch.Tensor,
    queries: torch.Tensor,
    logits: torch.Tensor,
    lse: torch.Tensor,
    dout: torch.Tensor | None,
    dlse: torch.Tensor | None,
    dlogits: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of phase1_forward -> (dblocks [n, M, D], dqueries [S, D])."""
    nb, m, d = blocks.shape
    s = queries.shape[0]
    bs = triton.next_power_of_2(s)
    bd, bm, g, warps = _tiles(m, bs * launch.block_d(d), d, blocks.device)
    dblocks = launch.empty(blocks.shape, blocks.dtype, blocks.device)
    dq_part = launch.empty((g, s, d), torch.float32, blocks.device)
    _phase1_bwd_kernel[(g,)](
        blocks, queries, logits, lse,
        dout if dout is not None else blocks,
        dlse if dlse is not None else lse,
        dlogits if dlogits is not None else logits,
        dblocks, dq_part, nb, s, m, d, m * d, eps,
        HAS_DOUT=dout is not None, HAS_DLSE=dlse is not None, HAS_DLOGIT=dlogits is not None,
        BLOCK_S=bs, BLOCK_M=bm, BLOCK_D=bd, num_warps=warps,
    )  # fmt: skip
    return dblocks, dq_part.sum(0).to(queries.dtype)


def phase2_forward(
    phase1_out: torch.Tensor,
    phase1_lse: torch.Tensor,
    partial: torch.Tensor | None,
    query: torch.Tensor,
    block_logits: torch.Tensor,
    eps: float,
    stats: tuple[torch.Tensor, ...] | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """phase1_out [M, D], phase1_lse [M], partial [M, D] or None, query [D], block_logits
    [n, M] (one query's phase-1 logits) -> (out [M, D] or None when there is no partial sum,
    weights [n + 1, M] float32).

    stats: float32 slots (weight_sum [n], entropy_sum [1], partial_weight_sum [1]); the last
    only with a partial sum.
    """
    launch.check_launchable(phase1_out, phase1_lse, partial, query, block_logits)
    m, d = phase1_out.shape
    nb = block_logits.shape[0]
    bd, bm, g, warps = _tiles(m, launch.block_d(d), d, phase1_out.device)
    has_partial = partial is not None
    out = (
        launch.empty(phase1_out.shape, phase1_out.dtype, phase1_out.device) if has_partial else None
    )
    weights = launch.empty((nb + 1, m), torch.float32, phase1_out.device)
    slots = list(stats) if stats is not None else []
    slots += [weights] * (3 - len(slots))
    _phase2_fwd_kernel[(g,)](
        phase1_out, phase1_lse, partial if has_partial else phase1_out, query, block_logits,
        out if has_partial else phase1_out, weights, *slots, nb, m, d, eps,
        HAS_PARTIAL=has_partial, HAS_STATS=stats is not None,
        BLOCK_N=triton.next_power_of_2(nb + 1), BLOCK_M=bm, BLOCK_D=bd, num_warps=warps,
    )  # fmt: skip
    return out, weights


def phase2_backward(
    phase1_out: torch.Tensor,
    phase1_lse: torch.Tensor,
    partial: torch.Tensor,
    query: torch.Tensor,
    block_logits: torch.Tensor,
    dout: torch.Tensor | None,
    dweights: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients of phase2_forward with a partial sum -> (dphase1_out or None, dphase1_lse [M],
    dpartial [M, D], dquery [D], dblock_logits [n, M] or None)."""
    m, d = phase1_out.shape
    nb = block_logits.shape[0]
    bd, bm, g, warps = _tiles(m, launch.block_d(d), d, phase1_out.device)
    dev = phase1_out.device
    do1 = (
        launch.empty(phase1_out.shape, phase1_out.dtype, phase1_out.device)
        if dout is not None
        else None
    )
    dlse1 = launch.empty((m,), torch.float32, dev)
    dp = launch.empty(partial.shape, partial.dtype, partial.device)
    dzb = launch.empty((nb, m), torch.float32, dev) if dweights is not None else None
    dq_part = launch.empty((g, d), torch.float32, dev)
    _phase2_bwd_kernel[(g,)](
        phase1_out, phase1_lse, partial, query, block_logits,
        dout if dout is not None else phase1_out,
        dweights if dweights is not None else dlse1,
        do1 if do1 is not None else dp, dlse1, dp,
        dzb if dzb is not None else dlse1, dq_part, nb, m, d, eps,
        HAS_DOUT=dout is not None, HAS_DW=dweights is not None,
        BLOCK_N=triton.next_power_of_2(nb + 1), BLOCK_M=bm, BLOCK_D=bd, num_warps=warps,
    )  # fmt: skip
    return do1, dlse1, dp, dq_part.sum(0).to(query.dtype), dzb


# The launchers as custom ops (see ``launch.custom_op``): what the autograd Functions call.
phase1_fwd = launch.custom_op("block_phase1_fwd")(phase1_forward)
phase1_bwd = launch.custom_op("block_phase1_bwd")(phase1_backward)


@phase1_fwd.register_fake
def _(blocks, queries, eps):
    nb, m, d = blocks.shape
    s = queries.shape[0]
    f32 = torch.float32
    return (
        blocks.new_empty((s, m, d)),
        blocks.new_empty((s, m), dtype=f32),
        blocks.new_empty((s, nb, m), dtype=f32),
    )


@phase1_bwd.register_fake
def _(blocks, queries, logits, lse, dout, dlse, dlogits, eps):
    return blocks.new_empty(blocks.shape), queries.new_empty(queries.shape)


_SLOTS = ("weight_sum", "entropy_sum", "partial_weight_sum")


@launch.custom_op("block_phase2_fwd", mutates_args=_SLOTS)
def phase2_fwd(
    phase1_out: torch.Tensor,
    phase1_lse: torch.Tensor,
    partial: torch.Tensor,
    query: torch.Tensor,
    block_logits: torch.Tensor,
    eps: float,
    weight_sum: torch.Tensor | None,
    entropy_sum: torch.Tensor | None,
    partial_weight_sum: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`phase2_forward` with a partial sum -> (out [M, D], weights [n + 1, M]); the
    slots all given or all None."""
    stats = None if weight_sum is None else (weight_sum, entropy_sum, partial_weight_sum)
    return phase2_forward(phase1_out, phase1_lse, partial, query, block_logits, eps, stats)


@phase2_fwd.register_fake
def _(phase1_out, phase1_lse, partial, query, block_logits, eps, *slots):
    return phase1_out.new_empty(phase1_out.shape), _weights_like(phase1_out, block_logits)


@launch.custom_op("block_weights_fwd", mutates_args=_SLOTS[:2])
def block_weights_fwd(
    phase1_out: torch.Tensor,
    phase1_lse: torch.Tensor,
    block_logits: torch.Tensor,
    eps: float,
    weight_sum: torch.Tensor | None,
    entropy_sum: torch.Tensor | None,
) -> torch.Tensor:
    """:func:`phase2_forward` without a partial sum (phase1_out [M, D] gives the shape and is
    not read) -> weights [n + 1, M]; the slots both given or both None."""
    stats = None if weight_sum is None else (weight_sum, entropy_sum)
    zero_query = phase1_lse.new_zeros(phase1_out.shape[1])
    _, weights = phase2_forward(phase1_out, phase1_lse, None, zero_query, block_logits, eps, stats)
    return weights


@block_weights_fwd.register_fake
def _(phase1_out, phase1_lse, block_logits, eps, weight_sum, entropy_sum):
    return _weights_like(phase1_out, block_logits)


def _weights_like(t: torch.Tensor, block_logits: torch.Tensor) -> torch.Tensor:
    nb, m = block_logits.shape
    return t.new_empty((nb + 1, m), dtype=torch.float32)


@launch.custom_op("block_phase2_bwd")
def phase2_bwd(
    phase1_out: torch.Tensor,
    phase1_lse: torch.Tensor,
    partial: torch.Tensor,
    query: torch.Tensor,
    block_logits: torch.Tensor,
    dout: torch.Tensor | None,
    dweights: torch.Tensor | None,
    eps: float,
) -> list[torch.Tensor]:
    """:func:`phase2_backward` -> [dphase1_lse, dpartial, dquery], then dphase1_out when
    ``dout`` is given, then dblock_logits when ``dweights`` is."""
    do1, dlse1, dp, dq, dzb = phase2_backward(
        phase1_out, phase1_lse, partial, query, block_logits, dout, dweights, eps
    )
    return [dlse1, dp, dq] + [g for g in (do1, dzb) if g is not None]


@phase2_bwd.register_fake
def _(phase1_out, phase1_lse, partial, query, block_logits, dout, dweights, eps):
    grads = [
        phase1_lse.new_empty(phase1_lse.shape, dtype=torch.float32),
        partial.new_empty(partial.shape),
        query.new_empty(query.shape),
    ]
    if dout is not None:
        grads.append(phase1_out.new_empty(phase1_out.shape))
    if dweights is not None:
        grads.append(block_logits.new_empty(block_logits.shape, dtype=torch.float32))
    return grads


def _matrix(t: torch.Tensor | None, cols: int) -> torch.Tensor | None:
    return None if t is None else t.reshape(-1, cols).contiguous()


class BlockPhase1Function(torch.autograd.Function):
    """(blocks [n, *, D], queries [S, D]) -> (out [S, *, D], lse [S, *], logits [S, n, *])."""

    @staticmethod
    def forward(ctx, blocks, queries, eps):
        nb, *token_shape, d = blocks.shape
        s = queries.shape[0]
        blk = blocks.reshape(nb, -1, d).contiguous()
        q = queries.contiguous()
        out, lse, logits = phase1_fwd(blk, q, eps)
        ctx.save_for_backward(blk, q, logits, lse)
        ctx.set_materialize_grads(False)
        ctx.eps = eps
        ctx.shapes = (blocks.shape, queries.dtype)
        return (
            out.view(s, *token_shape, d),
            lse.view(s, *token_shape),
            logits.view(s, nb, *token_shape),
        )

    @staticmethod
    @once_differentiable  # a kernel launch: a second derivative would be wrong, so none
    def backward(ctx, dout, dlse, dlogits):
        blk, q, logits, lse = ctx.saved_tensors
        nb, m, d = blk.shape
        s = q.shape[0]
        dblk, dq = phase1_bwd(
            blk,
            q,
            logits,
            lse,
            None if dout is None else dout.reshape(s, m, d).contiguous(),
            None if dlse is None else dlse.reshape(s, m).contiguous(),
            None if dlogits is None else dlogits.reshape(s, nb, m).contiguous(),
            ctx.eps,
        )
        return dblk.view(ctx.shapes[0]), dq, None


class BlockPhase2Function(torch.autograd.Function):
    """Merge with a partial sum: (phase1_out [*, D], phase1_lse [*], partial [*, D], query [D],
    block_logits [n, *]) -> (out [*, D], weights [n + 1, *]). The float32 slots weight_sum [n],
    entropy_sum [1], partial_weight_sum [1] are all given or all None."""

    @staticmethod
    def forward(ctx, phase1_out, phase1_lse, partial, query, block_logits, eps, *slots):
        *token_shape, d = phase1_out.shape
        nb = block_logits.shape[0]
        o1, p = _matrix(phase1_out, d), _matrix(partial, d)
        lse1 = phase1_lse.reshape(-1).contiguous()
        zb = block_logits.reshape(nb, -1).contiguous()
        out, weights = phase2_fwd(o1, lse1, p, query.contiguous(), zb, eps, *slots)
        ctx.save_for_backward(o1, lse1, p, query, zb)
        ctx.set_materialize_grads(False)
        ctx.eps = eps
        ctx.shapes = (phase1_out.shape, phase1_lse.shape, block_logits.shape)
        return out.view(phase1_out.shape), weights.view(nb + 1, *token_shape)

    @staticmethod
    @once_differentiable  # a kernel launch: a second derivative would be wrong, so none
    def backward(ctx, dout, dweights):
        o1, lse1, p, query, zb = ctx.saved_tensors
        out_shape, lse_shape, logits_shape = ctx.shapes
        m, d = o1.shape
        dlse1, dp, dq, *rest = phase2_bwd(
            o1,
            lse1,
            p,
            query.contiguous(),
            zb,
            _matrix(dout, d),
            _matrix(dweights, m),
            ctx.eps,
        )
        do1 = rest.pop(0) if dout is not None else None
        dzb = rest.pop(0) if dweights is not None else None
        return (
            None if do1 is None else do1.view(out_shape),
            dlse1.view(lse_shape),
            dp.view(out_shape),
            dq,
            None if dzb is None else dzb.view(logits_shape),
            None,
            None,
            None,
            None,
        )


class BlockWeightsFunction(torch.autograd.Function):
    """First sublayer of a block (no partial sum): (phase1_lse [*], block_logits [n, *])
    -> weights [n + 1, *] with a zero last row; out is phase1_out. The float32 slots
    weight_sum [n] and entropy_sum [1] are both given or both None."""

    @staticmethod
    def forward(ctx, phase1_out, phase1_lse, block_logits, eps, weight_sum, entropy_sum):
        *token_shape, d = phase1_out.shape
        nb = block_logits.shape[0]
        lse1 = phase1_lse.reshape(-1).contiguous()
        zb = block_logits.reshape(nb, -1).contiguous()
        weights = block_weights_fwd(_matrix(phase1_out, d), lse1, zb, eps, weight_sum, entropy_sum)
        ctx.save_for_backward(weights)
        ctx.shapes = (phase1_lse.shape, block_logits.shape)
        return weights.view(nb + 1, *token_shape)

    @staticmethod
    @once_differentiable  # a kernel launch: a second derivative would be wrong, so none
    def backward(ctx, dweights):
        (weights,) = ctx.saved_tensors
        lse_shape, logits_shape = ctx.shapes
        nb = logits_shape[0]
        # weights_i = exp(z_i − lse): elementwise on [n, *], no pass over D.
        dz = weights[:nb] * dweights.reshape(nb + 1, -1)[:nb].float()
        return None, -dz.sum(0).view(lse_shape), dz.view(logits_shape), None, None, None
