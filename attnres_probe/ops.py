"""The ops the models call: RMSNorm (optionally fused with the residual add) and AttnRes
aggregation.

Each op dispatches to a fused Triton kernel on CUDA and to the pure-torch reference elsewhere
(`ATTNRES_PROBE_KERNELS=triton|reference` forces either). While a :func:`recording` is active,
an op that is given a ``site`` (the sublayer index it serves; ``n_sublayers`` for the model
output) accumulates its by-product statistics into the recording's device-side slots. The
probe opens the recording; this module never imports the probe.

Shapes: ``*`` is any number of token dims (usually ``B, T``), ``D`` the model width,
``N`` the number of depth sources, ``S`` the number of sublayers that share a phase-1 pass.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch

from attnres_probe.kernels import reference

__all__ = [
    "StatsSlots",
    "IndexCache",
    "Observer",
    "recording",
    "current_recording",
    "observe_update",
    "observe_stream",
    "rms_norm",
    "add_rms_norm",
    "attnres",
    "block_attnres_phase1",
    "block_attnres_phase2",
    "kernel_backend",
]


class IndexCache:
    """Device index tensors for tuples of indices, made once each: the same index sets come
    back every step, and making one is a host->device copy."""

    def __init__(self, device: torch.device | str, size: int = 256):
        self.device = device
        self.size = size
        self._cache: dict[tuple[int, ...], torch.Tensor] = {}

    def __call__(self, indices: tuple[int, ...]) -> torch.Tensor:
        index = self._cache.get(indices)
        if index is None:
            if len(self._cache) >= self.size:
                self._cache.clear()
            index = self._cache[indices] = torch.tensor(indices, device=self.device)
        return index


class Observer(Protocol):
    """Receives the model tensors a recording wants besides the ops' own statistics."""

    def update(self, index: int, f: torch.Tensor) -> None:
        """Sublayer ``index`` computed its update ``f``."""

    def stream(self, index: int, h: torch.Tensor) -> None:
        """``h`` is the stream entering layer ``index`` (``n_layers``: the final stream)."""


@dataclass
class StatsSlots:
    """Device-side accumulators the ops add into while a recording is active.

    Every slot is float32 and summed over tokens (or over elements, for the ``*_sq`` slots);
    the counts that turn sums into means are plain Python ints known from shapes, so reading
    them never syncs the device. The slots are fixed views into one buffer, ``sums``, so the
    per-site views an op adds into are made once (:meth:`norm_stats`, :meth:`depth_stats`).
    ``norm_grads=False`` leaves ``norm_grad_sq`` alone: the norms then add no gradient
    statistic (and no backward work for it). ``observer`` receives what the model hands to
    :func:`observe_update` and :func:`observe_stream`.
    """

    n_sites: int
    n_sources: int
    device: torch.device | str = "cpu"
    norm_grads: bool = True
    observer: Observer | None = None
    sums: torch.Tensor = field(init=False)  # every slot below, one after another
    norm_sq: torch.Tensor = field(init=False)  # [n_sites] Σx² of the stream a norm receives
    norm_grad_sq: torch.Tensor = field(init=False)  # [n_sites] Σ(∂L/∂x)² of that stream
    depth_weight_sum: torch.Tensor = field(init=False)  # [n_sites, n_sources] Σ_tokens α
    source_rms_sum: torch.Tensor = field(init=False)  # [n_sites, n_sources] Σ_tokens rms(v_i)
    depth_entropy_sum: torch.Tensor = field(init=False)  # [n_sites] Σ_tokens H(α)
    norm_numel: list[int] = field(init=False)  # elements behind norm_sq per site
    depth_tokens: list[int] = field(init=False)  # tokens behind the depth slots per site

    SLOTS = ("norm_sq", "norm_grad_sq", "depth_weight_sum", "source_rms_sum", "depth_entropy_sum")

    def __post_init__(self) -> None:
        n, k = self.n_sites, self.n_sources
        shapes = ((n,), (n,), (n, k), (n, k), (n,))
        sizes = [math.prod(shape) for shape in shapes]
        self.sums = torch.zeros(sum(sizes), dtype=torch.float32, device=self.device)
        for name, shape, part in zip(self.SLOTS, shapes, self.sums.split(sizes), strict=True):
            setattr(self, name, part.view(shape))
        self.norm_numel = [0] * n
        self.depth_tokens = [0] * n
        self._views: dict[tuple, reference.NormStats | reference.DepthStats] = {}
        self._kept: list[tuple[int, torch.Tensor]] = []  # (site, x) with x's gradient retained
        self._index = IndexCache(self.device)

    def reset(self) -> None:
        self.sums.zero_()
        self._kept.clear()
        for counts in (self.norm_numel, self.depth_tokens):
            counts[:] = [0] * self.n_sites

    def settle(self) -> None:
        """Add the norms' gradient statistic still held as retained gradients (the reference
        path; see ``reference.NormStats``) into ``norm_grad_sq``, with one batched reduction.

        Call it after the backward pass and before reading ``norm_grad_sq`` (the probe does,
        when a step closes); the fused kernels add theirs at once, so it is a no-op there.
        """
        kept, self._kept = self._kept, []
        sites, grads = reference.take_retained_grads(kept)
        if not grads:
            return
        index = self._index(tuple(sites))
        wide = any(g.dtype == torch.float64 for g in grads)  # float64 stays float64 until here
        norms = torch._foreach_norm(grads, 2, dtype=torch.float64 if wide else torch.float32)
        self.norm_grad_sq.index_add_(0, index, torch.stack(norms).square().float())

    def norm_stats(self, site: int) -> reference.NormStats:
        """The slots a norm op at ``site`` adds into (views made once)."""
        key = ("norm", site)
        stats = self._views.get(key)
        if stats is None:
            grad_sq = self.norm_grad_sq[site : site + 1] if self.norm_grads else None
            stats = reference.NormStats(
                sq=self.norm_sq[site : site + 1],
                grad_sq=grad_sq,
                keep_grad=lambda x: self._kept.append((site, x)),
            )
            self._views[key] = stats
        return stats

    def depth_stats(
        self, site: int, n_sources: int, has_partial: bool = False
    ) -> reference.DepthStats:
        """The slots a depth-attention op at ``site`` over ``n_sources`` sources adds into.

        Sources fill the first ``n_sources`` columns; a Block AttnRes partial sum always goes
        to the last column, so a column means the same source at every site.
        """
        key = ("depth", site, n_sources, has_partial)
        stats = self._views.get(key)
        if stats is None:
            if n_sources + has_partial > self.n_sources:
                raise IndexError(f"{n_sources} sources exceed the recording's {self.n_sources}")
            last = self.n_sources - 1
            stats = reference.DepthStats(
                weight_sum=self.depth_weight_sum[site, :n_sources],
                source_rms_sum=self.source_rms_sum[site, :n_sources],
                entropy_sum=self.depth_entropy_sum[site : site + 1],
                partial_weight_sum=self.depth_weight_sum[site, last:] if has_partial else None,
                partial_rms_sum=self.source_rms_sum[site, last:] if has_partial else None,
            )
            self._views[key] = stats
        return stats


_RECORDING: contextvars.ContextVar[StatsSlots | None] = contextvars.ContextVar(
    "attnres_probe_recording", default=None
)


@contextlib.contextmanager
def recording(slots: StatsSlots) -> Iterator[StatsSlots]:
    """Make ops called with a ``site`` accumulate their statistics into ``slots``."""
    token = _RECORDING.set(slots)
    try:
        yield slots
    finally:
        _RECORDING.reset(token)


def current_recording() -> StatsSlots | None:
    return _RECORDING.get()


def observe_update(index: int, f: torch.Tensor) -> None:
    """A model hands sublayer ``index``'s update to the recording's observer (if any): one
    context lookup outside a recording, no module hook either way."""
    slots = _RECORDING.get()
    if slots is not None and slots.observer is not None:
        slots.observer.update(index, f)


def observe_stream(index: int, h: torch.Tensor) -> None:
    """A model hands the stream entering layer ``index`` to the recording's observer (if any)."""
    slots = _RECORDING.get()
    if slots is not None and slots.observer is not None:
        slots.observer.stream(index, h)


def kernel_backend(x: torch.Tensor) -> str:
    """'triton' or 'reference': the backend an op on ``x`` runs on."""
    forced = os.environ.get("ATTNRES_PROBE_KERNELS", "").strip().lower()
    if forced in ("reference", "torch"):
        return "reference"
    if forced == "triton":
        return "triton"
    if forced not in ("", "auto"):
        raise ValueError(
            f"ATTNRES_PROBE_KERNELS={forced!r} is not a backend; "
            "use 'triton', 'reference' or 'auto'"
        )
    return "triton" if x.is_cuda and _triton_available() else "reference"


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _slots_for(site: int | None) -> StatsSlots | None:
    slots = _RECORDING.get()
    if slots is None or site is None:
        return None
    if not 0 <= site < slots.n_sites:
        raise IndexError(f"site {site} is outside the recording's {slots.n_sites} sites")
    return slots


def _impl():
    """The module holding the implementations for the current backend."""
    return reference


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, site: int | None = None
) -> torch.Tensor:
    """``x / rms(x) * weight`` over the last dim. x [*, D], weight [D] -> [*, D]."""
    slots = _slots_for(site)
    stats = _norm_stats(slots, site, x)
    return _dispatch(x).rms_norm(x, weight, eps, stats)


def add_rms_norm(
    x: torch.Tensor,
    update: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    site: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add fused with RMSNorm: ``h = x + update``; returns ``(rms_norm(h), h)``."""
    slots = _slots_for(site)
    stats = _norm_stats(slots, site, x)
    return _dispatch(x).add_rms_norm(x, update, weight, eps, stats)


def attnres(
    sources: torch.Tensor, query: torch.Tensor, eps: float = 1e-6, site: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention over depth. sources [N, *, D], query [D] -> (out [*, D], weights [N, *]).

    keys = RMSNorm(sources) without a learned scale; weights = softmax_N(query · key);
    out = Σ_N weights · sources.
    """
    slots = _slots_for(site)
    stats = _depth_stats(slots, site, sources.shape[0], sources[0, ..., 0].numel())
    return _dispatch(sources).attnres(sources, query, eps, stats)


def block_attnres_phase1(
    blocks: torch.Tensor, queries: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Phase 1 of Block AttnRes: one pass over the completed blocks serves S queries.

    blocks [n, *, D], queries [S, D] -> (out [S, *, D] normalised over the n blocks,
    lse [S, *] float32 log-sum-exp of the logits).
    """
    return _dispatch(blocks).block_attnres_phase1(blocks, queries, eps)


def block_attnres_phase2(
    blocks: torch.Tensor,
    phase1_out: torch.Tensor,
    phase1_lse: torch.Tensor,
    partial: torch.Tensor | None,
    query: torch.Tensor,
    eps: float = 1e-6,
    site: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Phase 2: merge one sublayer's phase-1 result with the intra-block partial sum.

    blocks [n, *, D] (only read for statistics), phase1_out [*, D], phase1_lse [*],
    partial [*, D] or None (first sublayer of a block), query [D]
    -> (out [*, D], weights [n + 1, *]) where the last weight row belongs to the partial sum
    (zero when there is none). Equal to :func:`attnres` over ``blocks`` (+ ``partial``).
    """
    slots = _slots_for(site)
    stats = _depth_stats(slots, site, blocks.shape[0], phase1_lse.numel(), partial is not None)
    return _dispatch(blocks).block_attnres_phase2(
        blocks, phase1_out, phase1_lse, partial, query, eps, stats
    )


def _dispatch(x: torch.Tensor):
    if kernel_backend(x) == "triton":
        from attnres_probe.kernels import dispatch_triton

        return dispatch_triton
    return reference


def _norm_stats(slots: StatsSlots | None, site: int | None, x: torch.Tensor):
    if slots is None:
        return None
    slots.norm_numel[site] += x.numel()
    return slots.norm_stats(site)


def _depth_stats(
    slots: StatsSlots | None,
    site: int | None,
    n_sources: int,
    n_tokens: int,
    has_partial: bool = False,
):
    if slots is None:
        return None
    stats = slots.depth_stats(site, n_sources, has_partial)
    slots.depth_tokens[site] += n_tokens
    return stats
