"""Pure-torch references for every fused op: the documentation of what the kernels compute.

Each function takes an optional statistics bundle; when given, it adds its by-product
reductions into those device tensors (never syncing the host). Forward statistics are
accumulated under ``no_grad``; the backward statistic (Σ gradient²) through a tensor hook,
which fires exactly when autograd computes that gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class NormStats:
    """Slots a norm op adds into: sq [1] += Σx², grad_sq [1] += Σ(∂L/∂x)² (x: the stream)."""

    sq: torch.Tensor
    grad_sq: torch.Tensor


@dataclass
class DepthStats:
    """Slots a depth-attention op adds into, summed over tokens.

    weight_sum [n] += Σ α_i, source_rms_sum [n] += Σ rms(v_i), entropy_sum [1] += Σ H(α).
    For Block AttnRes phase 2 the partial sum's weight and RMS go to the ``partial_*`` slots [1].
    """

    weight_sum: torch.Tensor
    source_rms_sum: torch.Tensor
    entropy_sum: torch.Tensor
    partial_weight_sum: torch.Tensor | None = None
    partial_rms_sum: torch.Tensor | None = None


def _acc(x: torch.Tensor) -> torch.Tensor:
    """x in its accumulation precision: float32, or float64 when given float64."""
    return x if x.dtype == torch.float64 else x.float()


def _accumulate_grad_sq(x: torch.Tensor, slot: torch.Tensor) -> None:
    if x.requires_grad:
        x.register_hook(lambda g: slot.add_(g.detach().float().pow(2).sum()) and None)


def _rms_normalise(x: torch.Tensor, eps: float) -> torch.Tensor:
    xf = _acc(x)
    return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, stats: NormStats | None = None
) -> torch.Tensor:
    """x [*, D], weight [D] -> x / sqrt(mean(x²) + eps) * weight, computed in float32."""
    if stats is not None:
        with torch.no_grad():
            stats.sq.add_(x.detach().float().pow(2).sum())
        _accumulate_grad_sq(x, stats.grad_sq)
    return (_rms_normalise(x, eps) * _acc(weight)).to(x.dtype)


def add_rms_norm(
    x: torch.Tensor,
    update: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    stats: NormStats | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """h = x + update; returns (rms_norm(h), h). Statistics describe h and ∂L/∂h."""
    h = x + update
    return rms_norm(h, weight, eps, stats), h


def _depth_softmax(
    sources: torch.Tensor, query: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """sources [N, *, D], query [D] -> (logits [N, *] float32, rms [N, *] float32)."""
    sf = _acc(sources)
    rms = torch.sqrt(sf.pow(2).mean(-1) + eps)
    logits = (sf * _acc(query)).sum(-1) / rms
    return logits, rms


def _add_depth_stats(
    stats: DepthStats, weights: torch.Tensor, rms: torch.Tensor, n_partial: int = 0
) -> None:
    """weights, rms [N, *] float32; the last ``n_partial`` rows belong to the partial sum."""
    with torch.no_grad():
        w = weights.detach().flatten(1)
        r = rms.detach().flatten(1)
        n = w.shape[0] - n_partial
        stats.weight_sum.add_(w[:n].sum(1))
        stats.source_rms_sum.add_(r[:n].sum(1))
        plogp = torch.where(w > 0, w * torch.log(w), torch.zeros_like(w))
        stats.entropy_sum.add_(-plogp.sum())
        if n_partial:
            stats.partial_weight_sum.add_(w[n:].sum())
            stats.partial_rms_sum.add_(r[n:].sum())


def attnres(
    sources: torch.Tensor,
    query: torch.Tensor,
    eps: float = 1e-6,
    stats: DepthStats | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full AttnRes. sources [N, *, D], query [D] -> (out [*, D], weights [N, *] float32)."""
    logits, rms = _depth_softmax(sources, query, eps)
    weights = torch.softmax(logits, dim=0)
    out = (weights.unsqueeze(-1) * _acc(sources)).sum(0)
    if stats is not None:
        _add_depth_stats(stats, weights, rms)
    return out.to(sources.dtype), weights


def block_attnres_phase1(
    blocks: torch.Tensor, queries: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """blocks [n, *, D], queries [S, D] -> (out [S, *, D], lse [S, *] float32).

    Every query's softmax over the n completed blocks, kept normalised, with its log-sum-exp.
    """
    bf = _acc(blocks)
    rms = torch.sqrt(bf.pow(2).mean(-1) + eps)  # [n, *]
    keys = bf / rms.unsqueeze(-1)
    # The einsums would otherwise run in bfloat16 under autocast (lse must stay float32).
    with torch.autocast(blocks.device.type, enabled=False):
        logits = torch.einsum("n...d,sd->sn...", keys, _acc(queries))  # [S, n, *]
        lse = torch.logsumexp(logits, dim=1)  # [S, *]
        weights = torch.exp(logits - lse.unsqueeze(1))
        out = torch.einsum("sn...,n...d->s...d", weights, bf)
    return out.to(blocks.dtype), lse


def block_attnres_phase2(
    blocks: torch.Tensor,
    phase1_out: torch.Tensor,
    phase1_lse: torch.Tensor,
    partial: torch.Tensor | None,
    query: torch.Tensor,
    eps: float = 1e-6,
    stats: DepthStats | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Online-softmax merge of phase 1 with the partial sum -> (out [*, D], weights [n+1, *]).

    Weight row n is the partial sum's (zero when ``partial`` is None).
    """
    lse1 = _acc(phase1_lse)
    if partial is None:
        out, lse = phase1_out, lse1
        partial_weight = torch.zeros_like(lse1)
    else:
        pf = _acc(partial)
        p_rms = torch.sqrt(pf.pow(2).mean(-1) + eps)
        p_logit = (pf * _acc(query)).sum(-1) / p_rms
        lse = torch.logaddexp(lse1, p_logit)
        keep = torch.exp(lse1 - lse)
        partial_weight = torch.exp(p_logit - lse)
        out = (keep.unsqueeze(-1) * _acc(phase1_out) + partial_weight.unsqueeze(-1) * pf).to(
            phase1_out.dtype
        )
    # The per-block weights are a by-product of the logits phase 1 already formed.
    b_logits, b_rms = _depth_softmax(blocks, query, eps)
    block_weights = torch.exp(b_logits - lse.unsqueeze(0))
    weights = torch.cat([block_weights, partial_weight.unsqueeze(0)], 0)
    if stats is not None:
        if partial is None:
            _add_depth_stats(stats, block_weights, b_rms)
        else:
            rms_all = torch.cat([b_rms, p_rms.unsqueeze(0)], 0)
            _add_depth_stats(stats, weights, rms_all, n_partial=1)
    return out, weights
