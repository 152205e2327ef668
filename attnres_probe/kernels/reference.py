"""Pure-torch references for every fused op: the documentation of what the kernels compute.

Each function takes an optional statistics bundle; when given, it adds its by-product
reductions into those device tensors (never syncing the host). Forward statistics are
added without building graph; the backward statistic (Σ gradient²) through a tensor hook,
which fires exactly when autograd computes that gradient, or from the retained gradient,
reduced later with others (see :class:`NormStats`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class NormStats:
    """Slots a norm op adds into: sq [1] += Σx², grad_sq [1] += Σ(∂L/∂x)² (x: the stream).

    grad_sq None: the gradient statistic is not wanted (no hook, no extra backward work).
    keep_grad: where given, x is handed to it once :func:`retain_grad_cheaply` retains its
    gradient, and its owner adds Σ(∂L/∂x)² into grad_sq later, for many norms at once
    (``ops.StatsSlots.settle``); otherwise a tensor hook adds it as autograd computes it.
    The two differ only if one graph is backpropagated twice in a step: the retained
    gradient is then the sum of both.
    """

    sq: torch.Tensor
    grad_sq: torch.Tensor | None
    keep_grad: Callable[[torch.Tensor], None] | None = None


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


def retain_grad_cheaply(x: torch.Tensor) -> bool:
    """Retain ∂L/∂x (autograd's own hook: no Python call in the backward pass) where that is
    safe and cheap: a CPU non-leaf that nobody else retains (elsewhere the retained copy would
    hold device memory until it is taken). False: the caller hooks x instead."""
    if x.device.type != "cpu" or x.is_leaf or x.retains_grad:
        return False
    x.retain_grad()
    return True


def take_retained_grads(
    kept: list[tuple[int, torch.Tensor]],
) -> tuple[list[int], list[torch.Tensor]]:
    """(indices, gradients) of the retained tensors a backward pass reached; each gradient is
    released from its tensor (kept: (index, x) pairs given to :func:`retain_grad_cheaply`)."""
    indices, grads = [], []
    for index, x in kept:
        if x.grad is not None:  # None: no backward pass reached x
            indices.append(index)
            grads.append(x.grad)
            x.grad = None
    return indices, grads


def _accumulate_grad_sq(x: torch.Tensor, stats: NormStats) -> None:
    """grad_sq += Σ(∂L/∂x)² of ∂L/∂x's total over every use of x (see :class:`NormStats`)."""
    slot = stats.grad_sq
    if slot is None or not x.requires_grad:
        return
    if stats.keep_grad is not None and retain_grad_cheaply(x):
        stats.keep_grad(x)
        return

    def hook(grad: torch.Tensor) -> None:
        g = _acc(grad).reshape(-1)
        slot.add_(torch.dot(g, g))

    x.register_hook(hook)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, stats: NormStats | None = None
) -> torch.Tensor:
    """x [*, D], weight [D] -> x / sqrt(mean(x²) + eps) * weight, computed in float32."""
    xf = _acc(x)
    ms = xf.pow(2).mean(-1, keepdim=True)
    if stats is not None:
        # Σx² is a by-product of the normalisation's own mean square: D · Σ_tokens mean(x²).
        stats.sq.add_(ms.detach().sum(), alpha=x.shape[-1])
        _accumulate_grad_sq(x, stats)
    return (xf * torch.rsqrt(ms + eps) * _acc(weight)).to(x.dtype)


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
        w = weights.flatten(1)
        r = rms.flatten(1)
        n = w.shape[0] - n_partial
        stats.weight_sum.add_(w[:n].sum(1))
        stats.source_rms_sum.add_(r[:n].sum(1))
        stats.entropy_sum.add_(torch.special.entr(w).sum())  # Σ -α log α, 0 where α = 0
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
