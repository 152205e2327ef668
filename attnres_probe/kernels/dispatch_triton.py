"""The Triton backend behind ``attnres_probe.ops``: the names and signatures of ``reference``.

Every function here returns what its namesake in ``reference`` returns (dtypes included) and
adds the same statistics, but runs the fused kernels through their autograd Functions. The
kernels compute in float32 whatever the input dtype, so they behave the same inside and outside
``torch.autocast``; float64 inputs go to the reference, which accumulates in float64.

Two notes on Block AttnRes:

* Phase 1 also forms every query's logits over the blocks and the blocks' RMS values. Phase 2
  of the same block looks them up here (keyed by the phase-1 ``lse`` tensor it is handed), so
  its per-block weights and statistics cost no second read of the blocks. Called with phase-1
  results from elsewhere, phase 2 computes the logits itself (one read of the blocks).
* Under activation checkpointing the recomputed forward runs the kernels again, so forward
  statistics are added twice, exactly as the reference adds them (``ops`` counts the
  recomputed call too, so their means hold); backward statistics are added once.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

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
                f"strides {slot.stride()}; index StatsSlots rows (as ops does), not columns"
            )
    return slots


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, stats: NormStats | None = None
) -> torch.Tensor:
    """x [*, D], weight [D] -> x / sqrt(mean(x²) + eps) * weight (see ``reference.rms_norm``)."""
    if _use_reference(x, weight):
        return reference.rms_norm(x, weight, eps, stats)
    sq, grad_sq = (None, None) if stats is None else _checked(stats.sq, stats.grad_sq)
    return triton_rms_norm(x, weight, eps, sq, grad_sq)


def add_rms_norm(
    x: torch.Tensor,
    update: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    stats: NormStats | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """h = x + update; returns (rms_norm(h), h) (see ``reference.add_rms_norm``)."""
    if _use_reference(x, update, weight):
        return reference.add_rms_norm(x, update, weight, eps, stats)
    sq, grad_sq = (None, None) if stats is None else _checked(stats.sq, stats.grad_sq)
    return AddRMSNormFunction.apply(x, update, weight, eps, sq, grad_sq)


def attnres(
    sources: torch.Tensor,
    query: torch.Tensor,
    eps: float = 1e-6,
    stats: DepthStats | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full AttnRes. sources [N, *, D], query [D] -> (out [*, D], weights [N, *] float32)."""
    if _use_reference(sources, query):
        return reference.attnres(sources, query, eps, stats)
    slots = (None, None, None)
    if stats is not None:
        slots = _checked(stats.weight_sum, stats.source_rms_sum, stats.entropy_sum)
    return AttnResFunction.apply(sources, query, eps, *slots)


@dataclass
class _Phase1Record:
    """What phase 1 formed besides its outputs, for phase 2 of the same block."""

    lse: weakref.ref  # the lse tensor handed to the caller, [S, *]
    blocks: weakref.ref  # the blocks tensor phase 1 read
    queries: weakref.ref  # the queries tensor, [S, D]
    logits: torch.Tensor  # [S, n, *] float32, differentiable
    rms: torch.Tensor  # [n, *] float32


# Keyed by the storage of the lse tensor: phase 2 is handed a view of it (lse[s]). A live lse
# keeps its storage, so a key cannot be reused while its record is reachable.
_PHASE1: dict[int, _Phase1Record] = {}


def block_attnres_phase1(
    blocks: torch.Tensor, queries: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """blocks [n, *, D], queries [S, D] -> (out [S, *, D], lse [S, *] float32)."""
    if _use_reference(blocks, queries):
        return reference.block_attnres_phase1(blocks, queries, eps)
    out, lse, logits, rms = BlockPhase1Function.apply(blocks, queries, eps)
    key = lse.untyped_storage().data_ptr()
    _PHASE1[key] = _Phase1Record(
        weakref.ref(lse), weakref.ref(blocks), weakref.ref(queries), logits, rms
    )
    weakref.finalize(lse, _PHASE1.pop, key, None)
    return out, lse


def _row_of(view: torch.Tensor, base: torch.Tensor) -> int | None:
    """s where ``view`` is ``base[s]`` (same storage, shape and strides), else None."""
    if view.shape != base.shape[1:] or view.stride() != base.stride()[1:] or base.stride(0) == 0:
        return None
    if view.untyped_storage().data_ptr() != base.untyped_storage().data_ptr():
        return None
    s, rest = divmod(view.storage_offset() - base.storage_offset(), base.stride(0))
    return s if rest == 0 and 0 <= s < base.shape[0] else None


def _phase1_by_products(
    blocks: torch.Tensor, phase1_lse: torch.Tensor, query: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [n, *], rms [n, *]) of ``query`` over ``blocks``: phase 1's, or formed anew."""
    record = _PHASE1.get(phase1_lse.untyped_storage().data_ptr())
    if record is not None:
        lse, queries = record.lse(), record.queries()
        if lse is not None and queries is not None and record.blocks() is blocks:
            s = _row_of(phase1_lse, lse)
            if s is not None and _row_of(query, queries) == s:
                return record.logits[s], record.rms
    _, _, logits, rms = BlockPhase1Function.apply(blocks, query.unsqueeze(0), eps)
    return logits[0], rms


def block_attnres_phase2(
    blocks: torch.Tensor,
    phase1_out: torch.Tensor,
    phase1_lse: torch.Tensor,
    partial: torch.Tensor | None,
    query: torch.Tensor,
    eps: float = 1e-6,
    stats: DepthStats | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge phase 1 with the partial sum -> (out [*, D], weights [n + 1, *] float32).

    Weight row n is the partial sum's (zero when ``partial`` is None, and then ``out`` is
    ``phase1_out`` itself, as in the reference).
    """
    if _use_reference(blocks, phase1_out, partial, query):
        return reference.block_attnres_phase2(
            blocks, phase1_out, phase1_lse, partial, query, eps, stats
        )
    block_logits, block_rms = _phase1_by_products(blocks, phase1_lse, query, eps)
    slots = None
    if stats is not None:
        slots = (stats.weight_sum, stats.source_rms_sum, stats.entropy_sum)
        if partial is not None:
            slots += (stats.partial_weight_sum, stats.partial_rms_sum)
        slots = _checked(*slots)
    if partial is None:
        weights = BlockWeightsFunction.apply(
            phase1_out, phase1_lse, block_logits, block_rms, eps, slots
        )
        return phase1_out, weights
    return BlockPhase2Function.apply(
        phase1_out, phase1_lse, partial, query, block_logits, block_rms, eps, slots
    )
