"""Pure-torch references for every fused op: the documentation of what the kernels compute.

Each function takes an optional statistics bundle; when given, it adds its by-product
reductions into those device tensors (never syncing the host). Forward statistics are added
without building graph. The one backward statistic, Σ(∂L/∂h)² of a fused add + norm's stream
h, is formed in that op's backward, as the fused kernels do: the reference returns it as the
gradient of ``NormStats.sink`` (a 0-d leaf the recording reads), the kernels add it into
``NormStats.grad_sq``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class NormStats:
    """Slots a norm op adds into: sq [1] += Σx² of the stream it normalises (None: not now).

    For the fused add + norm also the gradient of its stream h = x + update, every consumer of
    h counted (the norm and the caller's residual stream): the kernels add Σ(∂L/∂h)² into
    grad_sq [1] in their backward; the reference's backward returns it as the gradient of
    ``sink``, a 0-d leaf that requires grad (see ``ops.Recording``). Both None: no gradient
    statistic (no extra backward work).
    """

    sq: torch.Tensor | None
    grad_sq: torch.Tensor | None = None
    sink: torch.Tensor | None = None


@dataclass
class DepthStats:
    """Slots a depth-attention op adds into, summed over tokens.

    weight_sum [n] += Σ α_i, entropy_sum [1] += Σ H(α); Block AttnRes phase 2 adds the partial
    sum's weight into partial_weight_sum [1].
    """

    weight_sum: torch.Tensor
    entropy_sum: torch.Tensor
    partial_weight_sum: torch.Tensor | None = None


def _acc(x: torch.Tensor) -> torch.Tensor:
    """x in its accumulation precision: float32, or float64 when given float64."""
    return x if x.dtype == torch.float64 else x.float()


def inv_rms(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """1 / sqrt(mean(x²) + eps) over the last dim, in the accumulation precision: [*, D] -> [*].

    Depth-attention keys are x · inv_rms(x); a caller that keeps a source's inv_rms from when the
    source was made can hand it to :func:`attnres` instead of having it recomputed per op.
    """
    return torch.rsqrt(_acc(x).pow(2).mean(-1) + eps)


def _normalise(h: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(h / rms(h) in the accumulation precision, 1 / rms(h) [*, 1], Σh²): the forward both
    norms share; Σh² is a by-product of the normalisation's own mean square."""
    hf = _acc(h)
    ms = hf.pow(2).mean(-1, keepdim=True)
    inv = torch.rsqrt(ms + eps)
    return hf * inv, inv, ms.sum() * h.shape[-1]


def _saved_norm(ctx) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(normed, inv, weight) a norm's backward uses: as saved, or — when the backward itself
    is differentiated (``create_graph=True``) — formed again from the saved stream with
    differentiable ops, so that second derivatives are right, not those of constants."""
    h, normed, inv, weight = ctx.saved_tensors
    if torch.is_grad_enabled():
        normed, inv, _ = _normalise(h, ctx.eps)
    return normed, inv, weight


def _normalise_grads(
    grad_y: torch.Tensor, normed: torch.Tensor, inv: torch.Tensor, weight: torch.Tensor, need_w
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(∂L/∂h, ∂L/∂weight or None) of y = normed · weight from ∂L/∂y."""
    gy = _acc(grad_y)
    g = gy * _acc(weight)
    grad = inv * (g - normed * (g * normed).mean(-1, keepdim=True))
    grad_weight = (gy * normed).flatten(0, -2).sum(0).to(weight.dtype) if need_w else None
    return grad, grad_weight


class _RMSNorm(torch.autograd.Function):
    """y = x / sqrt(mean(x²) + eps) · weight in float32, cast to x's dtype; returns (y, Σx²).
    Written out rather than left to autograd: one node instead of six on the CPU."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        ctx.set_materialize_grads(False)
        normed, inv, sq = _normalise(x, eps)
        ctx.save_for_backward(x, normed, inv, weight)
        ctx.dtype, ctx.eps = x.dtype, eps
        ctx.mark_non_differentiable(sq)
        return (normed * _acc(weight)).to(x.dtype), sq

    @staticmethod
    def backward(ctx, grad_y, _grad_sq):
        if grad_y is None:
            return None, None, None
        normed, inv, weight = _saved_norm(ctx)
        grad, grad_weight = _normalise_grads(grad_y, normed, inv, weight, ctx.needs_input_grad[1])
        return grad.to(ctx.dtype), grad_weight, None


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, stats: NormStats | None = None
) -> torch.Tensor:
    """x [*, D], weight [D] -> x / sqrt(mean(x²) + eps) * weight, computed in float32."""
    y, sq = _RMSNorm.apply(x, weight, eps)
    if stats is not None and stats.sq is not None:
        stats.sq.add_(sq)
    return y


class _AddRMSNorm(torch.autograd.Function):
    """h = x + update; y = h / sqrt(mean(h²) + eps) · weight in float32, cast to h's dtype.
    Returns (y, h, Σh²); the backward forms ∂L/∂h once, for x, update and (given a ``sink``)
    its Σ(∂L/∂h)². Written out rather than left to autograd: one node instead of eight, which
    is what keeps the gradient statistic nearly free on the CPU."""

    @staticmethod
    def forward(ctx, x, update, weight, sink, eps):
        ctx.set_materialize_grads(False)
        h = x + update
        normed, inv, sq = _normalise(h, eps)
        ctx.save_for_backward(h, normed, inv, weight)
        ctx.dtypes, ctx.eps = (x.dtype, update.dtype), eps
        ctx.mark_non_differentiable(sq)
        return (normed * _acc(weight)).to(h.dtype), h, sq

    @staticmethod
    def backward(ctx, grad_y, grad_h, _grad_sq):
        normed, inv, weight = _saved_norm(ctx)
        grad, grad_weight, stat = None, None, None
        if grad_y is not None:
            need_w = ctx.needs_input_grad[2]
            grad, grad_weight = _normalise_grads(grad_y, normed, inv, weight, need_w)
        if grad_h is not None:
            grad = _acc(grad_h) if grad is None else grad + grad_h
        if grad is None:
            return None, None, grad_weight, None, None
        if ctx.needs_input_grad[3]:
            stat = torch.linalg.vector_norm(grad).square()  # grad is float32 or float64
        x_dtype, update_dtype = ctx.dtypes
        return grad.to(x_dtype), grad.to(update_dtype), grad_weight, stat, None


def add_rms_norm(
    x: torch.Tensor,
    update: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    stats: NormStats | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """h = x + update; returns (rms_norm(h), h). Statistics describe h and ∂L/∂h (a stream no
    gradient can reach — neither x nor update requires one — has no gradient statistic)."""
    sink = None
    if stats is not None and stats.sink is not None and torch.is_grad_enabled():
        sink = stats.sink if (x.requires_grad or update.requires_grad) else None
    y, h, sq = _AddRMSNorm.apply(x, update, weight, sink, eps)
    if stats is not None and stats.sq is not None:
        stats.sq.add_(sq)
    return y, h


def _add_depth_stats(stats: DepthStats, weights: torch.Tensor, n_partial: int = 0) -> None:
    """weights [N, *] float32; the last ``n_partial`` rows belong to the partial sum."""
    with torch.no_grad():
        w = weights.flatten(1)
        n = w.shape[0] - n_partial
        stats.weight_sum.add_(w[:n].sum(1))
        stats.entropy_sum.add_(torch.special.entr(w).sum())  # Σ -α log α, 0 where α = 0
        if n_partial:
            stats.partial_weight_sum.add_(w[n:].sum())


def depth_logits(
    sources: torch.Tensor, query: torch.Tensor, source_inv_rms: torch.Tensor
) -> torch.Tensor:
    """query · RMSNorm(v_i) without materialising the keys: sources [N, *, D], query [D],
    source_inv_rms [N, *] -> logits [N, *] in the accumulation precision."""
    # The matmul would otherwise run in bfloat16 under autocast (the kernels stay float32).
    with torch.autocast(sources.device.type, enabled=False):
        return torch.matmul(_acc(sources), _acc(query)) * source_inv_rms


def attnres(
    sources: torch.Tensor,
    query: torch.Tensor,
    eps: float = 1e-6,
    stats: DepthStats | None = None,
    source_inv_rms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full AttnRes. sources [N, *, D], query [D] -> (out [*, D], weights [N, *] float32).

    source_inv_rms [N, *]: each source's :func:`inv_rms`, when the caller already has it.
    """
    # One cast for every use: gradient terms that nearly cancel are summed before rounding.
    sf = _acc(sources)
    if source_inv_rms is None:
        source_inv_rms = inv_rms(sf, eps)
    weights = torch.softmax(depth_logits(sf, query, source_inv_rms), dim=0)
    out = (weights.unsqueeze(-1) * sf).sum(0)
    if stats is not None:
        _add_depth_stats(stats, weights)
    return out.to(sources.dtype), weights


class _AttnResOverSources(torch.autograd.Function):
    """:func:`attnres` over separate source tensors, without stacking them: one pass over each
    source for the logits, one for the output; the backward likewise (see
    ``kernels.attnres`` for its algebra). Inputs are in the accumulation precision."""

    @staticmethod
    def forward(ctx, query, source_inv_rms, *sources):
        logits = torch.stack([torch.mv(v, query) for v in sources]) * source_inv_rms  # [N, M]
        weights = torch.softmax(logits, dim=0)
        out = sources[0] * weights[0].unsqueeze(-1)
        for v, w in zip(sources[1:], weights[1:], strict=True):
            out.addcmul_(v, w.unsqueeze(-1))
        ctx.save_for_backward(query, source_inv_rms, weights, *sources)
        ctx.mark_non_differentiable(weights)
        return out, weights

    @staticmethod
    def backward(ctx, grad_out, _grad_weights):
        query, source_inv_rms, weights, *sources = ctx.saved_tensors
        if torch.is_grad_enabled():  # the backward is differentiated: weights from the inputs
            logits = torch.stack([torch.mv(v, query) for v in sources]) * source_inv_rms
            weights = torch.softmax(logits, dim=0)
        # dα_i = g·v_i; dz = α (dα − Σ α dα); z_i = (v_i·q) r_i with r_i = inv_rms(v_i).
        d_alpha = torch.stack([(v * grad_out).sum(-1) for v in sources])
        dz = weights * (d_alpha - (weights * d_alpha).sum(0, keepdim=True))
        dz_scaled = dz * source_inv_rms  # ∂L/∂(v_i·q)
        d_query = torch.zeros_like(query)
        d_sources = []
        for v, w, dzs in zip(sources, weights, dz_scaled, strict=True):
            d_query.addmv_(v.t(), dzs)
            d_sources.append(torch.addcmul(w.unsqueeze(-1) * grad_out, dzs.unsqueeze(-1), query))
        d_inv = dz * torch.stack([torch.mv(v, query) for v in sources])
        return (d_query, d_inv, *d_sources)


def attnres_over_sources(
    sources: list[torch.Tensor],
    query: torch.Tensor,
    eps: float = 1e-6,
    stats: DepthStats | None = None,
    source_inv_rms: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`attnres` over a list of N sources [*, D] (equal to it on their stack) that are
    never stacked: the model's growing list of depth sources is read in place at every site.
    source_inv_rms: each source's :func:`inv_rms` [*], when the caller keeps them."""
    shape = sources[0].shape
    flat = [_acc(v).reshape(-1, shape[-1]) for v in sources]
    if source_inv_rms is None:
        source_inv_rms = [inv_rms(v, eps) for v in flat]
    inv = torch.stack([r.reshape(-1) for r in source_inv_rms])
    with torch.autocast(sources[0].device.type, enabled=False):
        out, weights = _AttnResOverSources.apply(_acc(query), inv, *flat)
    if stats is not None:
        _add_depth_stats(stats, weights)
    return out.reshape(shape).to(sources[0].dtype), weights.reshape(len(sources), *shape[:-1])


def block_attnres_phase1(
    blocks: torch.Tensor, queries: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """blocks [n, *, D], queries [S, D] -> (out [S, *, D], lse [S, *], logits [S, n, *]).

    Every query's softmax over the n completed blocks, kept normalised, with its log-sum-exp
    and its logits (float32), from which phase 2 forms the per-block weights.
    """
    n, *tokens, d = blocks.shape
    bf = _acc(blocks).reshape(n, -1, d)  # [n, M, D]
    scale = inv_rms(bf, eps)  # [n, M]
    # The matmuls would otherwise run in bfloat16 under autocast (lse must stay float32).
    with torch.autocast(blocks.device.type, enabled=False):
        logits = (bf @ _acc(queries).T).permute(2, 0, 1) * scale  # [S, n, M]
        lse = torch.logsumexp(logits, dim=1)  # [S, M]
        weights = torch.exp(logits - lse.unsqueeze(1))
        # Per token, [S, n] @ [n, D]: one batched matmul with the tokens as the batch (an
        # einsum over "sn...,n...d" loops over tokens on the CPU).
        out = torch.bmm(weights.permute(2, 0, 1), bf.transpose(0, 1)).transpose(0, 1)
    s = queries.shape[0]
    out = out.reshape(s, *tokens, d)
    lse, logits = lse.reshape(s, *tokens), logits.reshape(s, n, *tokens)
    return out.to(blocks.dtype), lse, logits


def block_attnres_phase2(
    phase1_out: torch.Tensor,
    phase1_lse: torch.Tensor,
    block_logits: torch.Tensor,
    partial: torch.Tensor | None,
    query: torch.Tensor,
    eps: float = 1e-6,
    stats: DepthStats | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Online-softmax merge of phase 1 with the partial sum -> (out [*, D], weights [n+1, *]).

    block_logits [n, *]: this query's phase-1 logits. Weight row n is the partial sum's (zero
    when ``partial`` is None).
    """
    lse1 = _acc(phase1_lse)
    if partial is None:
        out, lse = phase1_out, lse1
        partial_weight = torch.zeros_like(lse1)
    else:
        pf = _acc(partial)
        p_logit = depth_logits(pf.unsqueeze(0), query, inv_rms(pf, eps).unsqueeze(0))[0]
        lse = torch.logaddexp(lse1, p_logit)
        keep = torch.exp(lse1 - lse)
        partial_weight = torch.exp(p_logit - lse)
        out = keep.unsqueeze(-1) * _acc(phase1_out) + partial_weight.unsqueeze(-1) * pf
        out = out.to(phase1_out.dtype)
    block_weights = torch.exp(_acc(block_logits) - lse.unsqueeze(0))
    weights = torch.cat([block_weights, partial_weight.unsqueeze(0)], 0)
    if stats is not None:
        _add_depth_stats(
            stats, weights if partial is not None else block_weights, int(partial is not None)
        )
    return out, weights
