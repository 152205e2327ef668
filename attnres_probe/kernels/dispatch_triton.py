"""The Triton backend behind ``attnres_probe.ops``: the names and signatures of ``reference``.

Every function here returns what its namesake in ``reference`` returns (dtypes included) and
adds the same statistics, but runs the fused kernels through their autograd Functions. The
kernels compute in float32 whatever the input dtype, so they behave the same inside and outside
``torch.autocast``; float64 inputs go to the reference, which accumulates in float64.

Under activation checkpointing the recomputed forward runs the kernels again, so forward
statistics are added twice, exactly as the reference adds them (``ops`` counts the recomputed
call too, so their means hold); backward statistics are added once.

Under ``torch.compile`` the Functions are traced and each kernel launch in them is one opaque
custom op (``launch.KernelOp``): a model on this path compiles whole, with or without slots.
The fused add + norm's backward adds Σ(∂L/∂h)² into ``grad_sq``, a forward input mutated during
the backward, which AOTAutograd keeps in the backward graph.
"""

from __future__ import annotations

import torch

from attnres_probe.kernels import reference
from attnres_probe.kernels.attnres import AttnResFunction
from attnres_probe.kernels.block_attnres import (
    BlockPhase1Function,
    BlockPhase2Function,
    BlockWeightsFunction,
)
from attnres_probe.kernels.reference import DepthStats, NormStats
from attnres_probe.kernels.rms_norm import AddRMSNormFunction
from attnres_probe.kernels.rms_norm import rms_norm as triton_rms_norm

__all__ = ["rms_norm", "add_rms_norm", "attnres", "block_attnres_phase1", "block_attnres_phase2"]


def _use_reference(*tensors: torch.Tensor | None) -> bool:
    return any(t is not None and t.dtype == torch.float64 for t in tensors)


def _checked(*slots: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """The kernels add into statistics slots by address: contiguous float32 only."""
    for slot in slots:
        if slot is not None and (slot.dtype != torch.float32 or not slot.is_contiguous()):
            raise ValueError(
                f"a statistics slot must be a contiguous float32 tensor, got {slot.dtype} with "
                f"strides {slot.stride()}; pass row views of a float32 buffer (as ops does)"
            )
    return slots


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, stats: NormStats | None = None
) -> torch.Tensor:
    """x [*, D], weight [D] -> x / sqrt(mean(x²) + eps) * weight (see ``reference.rms_norm``)."""
    if _use_reference(x, weight):
        return reference.rms_norm(x, weight, eps, stats)
    (sq,) = (None,) if stats is None else _checked(stats.sq)
    return triton_rms_norm(x, weight, eps, sq)


def add_rms_norm(
    x: torch.Tensor,
    update: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    stats: NormStats | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """h = x + update; returns (rms_norm(h), h) (see ``reference.add_rms_norm``)."""
    if _use_reference(x, update, weight) or (
        stats is not None and stats.grad_sq is None and stats.sink is not None
    ):
        # A statistic asked for through a sink only: the reference's backward forms it.
        return reference.add_rms_norm(x, update, weight, eps, stats)
    sq, grad_sq = (None, None) if stats is None else _checked(stats.sq, stats.grad_sq)
    return AddRMSNormFunction.apply(x, update, weight, eps, sq, grad_sq)


def attnres(
    sources: torch.Tensor,
    query: torch.Tensor,
    eps: float = 1e-6,
    stats: DepthStats | None = None,
    source_inv_rms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full AttnRes. sources [N, *, D], query [D] -> (out [*, D], weights [N, *] float32).

    The kernel forms each source's RMS in registers as it reads it, so ``source_inv_rms`` is
    not needed (and not read).
    """
    if _use_reference(sources, query):
        return reference.attnres(sources, query, eps, stats, source_inv_rms)
    slots = (None, None)
    if stats is not None:
        slots = _checked(stats.weight_sum, stats.entropy_sum)
    return AttnResFunction.apply(sources, query, eps, *slots)


def block_attnres_phase1(
    blocks: torch.Tensor, queries: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """blocks [n, *, D], queries [S, D] -> (out [S, *, D], lse [S, *], logits [S, n, *])."""
    if _use_reference(blocks, queries):
        return reference.block_attnres_phase1(blocks, queries, eps)
    return BlockPhase1Function.apply(blocks, queries, eps)


def block_attnres_phase2(
    phase1_out: torch.Tensor,
    phase1_lse: torch.Tensor,
    block_logits: torch.Tensor,
    partial: torch.Tensor | None,
    query: torch.Tensor,
    eps: float = 1e-6,
    stats: DepthStats | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge phase 1 with the partial sum -> (out [*, D], weights [n + 1, *] float32).

    Weight row n is the partial sum's (zero when ``partial`` is None, and then ``out`` is
    ``phase1_out`` itself, as in the reference).
    """
    if _use_reference(phase1_out, partial, query):
        return reference.block_attnres_phase2(
            phase1_out, phase1_lse, block_logits, partial, query, eps, stats
        )
    slots = (None, None, None)
    if stats is not None:
        slots = _checked(stats.weight_sum, stats.entropy_sum, stats.partial_weight_sum)
    if partial is None:
        weights = BlockWeightsFunction.apply(phase1_out, phase1_lse, block_logits, eps, *slots[:2])
        return phase1_out, weights
    return BlockPhase2Function.apply(
        phase1_out, phase1_lse, partial, query, block_logits, eps, *slots
    )
