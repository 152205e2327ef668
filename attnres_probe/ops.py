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
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from attnres_probe.kernels import reference

__all__ = [
    "StatsSlots",
    "recording",
    "current_recording",
    "rms_norm",
    "add_rms_norm",
    "attnres",
    "block_attnres_phase1",
    "block_attnres_phase2",
    "kernel_backend",
]


@dataclass
class StatsSlots:
    """Device-side accumulators the ops add into while a recording is active.

    Every slot is float32 and summed over tokens (or over elements, for the ``*_sq`` slots);
    the counts that turn sums into means are plain Python ints known from shapes, so reading
    them never syncs the device.
    """

    n_sites: int
    n_sources: int
    device: torch.device | str = "cpu"
    norm_sq: torch.Tensor = field(init=False)  # [n_sites] Σx² of the stream a norm receives
    norm_grad_sq: torch.Tensor = field(init=False)  # [n_sites] Σ(∂L/∂x)² of that stream
    depth_weight_sum: torch.Tensor = field(init=False)  # [n_sites, n_sources] Σ_tokens α
    source_rms_sum: torch.Tensor = field(init=False)  # [n_sites, n_sources] Σ_tokens rms(v_i)
    depth_entropy_sum: torch.Tensor = field(init=False)  # [n_sites] Σ_tokens H(α)
    norm_numel: list[int] = field(init=False)  # elements behind norm_sq per site
    grad_numel: list[int] = field(init=False)  # elements behind norm_grad_sq per site
    depth_tokens: list[int] = field(init=False)  # tokens behind the depth slots per site

    def __post_init__(self) -> None:
        f32 = dict(dtype=torch.float32, device=self.device)
        self.norm_sq = torch.zeros(self.n_sites, **f32)
        self.norm_grad_sq = torch.zeros(self.n_sites, **f32)
        self.depth_weight_sum = torch.zeros(self.n_sites, self.n_sources, **f32)
        self.source_rms_sum = torch.zeros(self.n_sites, self.n_sources, **f32)
        self.depth_entropy_sum = torch.zeros(self.n_sites, **f32)
        self.norm_numel = [0] * self.n_sites
        self.grad_numel = [0] * self.n_sites
        self.depth_tokens = [0] * self.n_sites

    def reset(self) -> None:
        for t in (
            self.norm_sq,
            self.norm_grad_sq,
            self.depth_weight_sum,
            self.source_rms_sum,
            self.depth_entropy_sum,
        ):
            t.zero_()
        for counts in (self.norm_numel, self.grad_numel, self.depth_tokens):
            counts[:] = [0] * self.n_sites


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
    slots.grad_numel[site] += x.numel()
    return reference.NormStats(
        sq=slots.norm_sq[site : site + 1], grad_sq=slots.norm_grad_sq[site : site + 1]
    )


def _depth_stats(
    slots: StatsSlots | None,
    site: int | None,
    n_sources: int,
    n_tokens: int,
    has_partial: bool = False,
):
    """Views into the slots for one depth-attention op.

    Sources fill the first ``n_sources`` columns; a Block AttnRes partial sum always goes to
    the last column, so a column means the same source at every site.
    """
    if slots is None:
        return None
    if n_sources + has_partial > slots.n_sources:
        raise IndexError(f"{n_sources} sources exceed the recording's {slots.n_sources}")
    slots.depth_tokens[site] += n_tokens
    last = slots.n_sources - 1
    return reference.DepthStats(
        weight_sum=slots.depth_weight_sum[site, :n_sources],
        source_rms_sum=slots.source_rms_sum[site, :n_sources],
        entropy_sum=slots.depth_entropy_sum[site : site + 1],
        partial_weight_sum=slots.depth_weight_sum[site, last:] if has_partial else None,
        partial_rms_sum=slots.source_rms_sum[site, last:] if has_partial else None,
    )
