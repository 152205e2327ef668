"""The ops the models call: RMSNorm (optionally fused with the residual add) and AttnRes
aggregation, and the :class:`Recording` they add their by-product statistics into.

Each op dispatches to a fused Triton kernel on CUDA and to the pure-torch reference elsewhere
(`ATTNRES_PROBE_KERNELS=triton|reference` forces either). An op handed a recording and a
``site`` (the sublayer it serves; ``n_sublayers`` for the model output) adds its statistics
into that recording's device-side sums. The probe makes the recording and hands it to the
model; this module never imports the probe. Everything here is plain tensor code with no
Python-side state read per call, so a model compiles whole with or without a recording.

Shapes: ``*`` is any number of token dims (usually ``B, T``), ``D`` the model width,
``N`` the number of depth sources, ``S`` the number of sublayers that share a phase-1 pass.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence

import torch

from attnres_probe.kernels import reference
from attnres_probe.kernels.reference import DepthStats, NormStats

__all__ = [
    "Recording",
    "IndexCache",
    "rms_norm",
    "add_rms_norm",
    "attnres",
    "inv_rms",
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


class _Tap(torch.autograd.Function):
    """Identity on x whose backward puts ‖∂L/∂x‖² (or 1, for a presence tap) into the gradient
    of the 0-d leaf ``sink``: autograd itself accumulates it over backward passes, inside or
    outside ``torch.compile``, with no hook and no retained gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sink: torch.Tensor, value: bool) -> torch.Tensor:
        ctx.value = value
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.value:
            wide = torch.float64 if grad.dtype == torch.float64 else torch.float32
            stat = torch.linalg.vector_norm(grad, dtype=wide).square()
        else:
            stat = torch.ones((), dtype=torch.float32, device=grad.device)
        return grad, stat, None


def _in_recompute() -> bool:
    """True while activation checkpointing recomputes a forward inside the backward pass
    (eager only: compiled graphs recompute inside the graph, without running this code)."""
    if torch.compiler.is_compiling():
        return False
    return torch._C._current_graph_task_id() != -1


class Recording:
    """The step being recorded: named float32 sums and int64 counts on the device, and
    gradient sinks. The probe builds one per probed model; ops, models and module hooks add
    into it; the probe reads it once per step (:meth:`settle`, then the sums and counts).

    sums: name -> shape of each float32 segment (Σ over elements or tokens).
    counts: name -> length of each int64 segment (elements or tokens behind a sum).
    grads: names of 1-D sum segments fed by taps (``‖∂L/∂x‖²`` per index); each gets a
    ``<name>_hits`` count segment (backward passes that reached the tap).
    per_token: count name -> elements per token per index, for :meth:`count_tokens`, which
    adds all of a forward's counts in one op where every site sees every token (this
    project's models).
    sources_at: site -> source columns of its depth op (``ModelConfig.sources_at``); given,
    the depth views are made here, once.
    norm_grads: the fused add + norm ops add Σ(∂L/∂h)² into ``norm_grad_sq``.
    """

    def __init__(
        self,
        sums: Mapping[str, tuple[int, ...]],
        counts: Mapping[str, int],
        grads: Sequence[str] = (),
        device: torch.device | str = "cpu",
        per_token: Mapping[str, Sequence[int]] | None = None,
        sources_at: Callable[[int], tuple[int, ...]] | None = None,
        n_sites: int = 0,
        norm_grads: bool = False,
    ):
        self.device = torch.device(device)
        counts = dict(counts)
        for name in grads:
            counts[f"{name}_hits"] = math.prod(sums[name])
        counts["backward_passes"] = 1
        self.sum_shapes = dict(sums)
        self.count_sizes = counts
        self.sums = torch.zeros(sum(math.prod(s) for s in sums.values()), device=self.device)
        self.counts = torch.zeros(sum(counts.values()), dtype=torch.int64, device=self.device)
        self.views = _split(self.sums, self.sum_shapes)
        self.count_views = _split(self.counts, {n: (k,) for n, k in counts.items()})
        # One 0-d leaf per tapped index: its .grad receives the statistic (see _Tap).
        self.sinks = {name: self._leaves(math.prod(sums[name])) for name in grads}
        # Presence taps count backward passes without a value (the kernels add the value).
        self.presence = {name: self._leaves(math.prod(sums[name])) for name in grads}
        self.presence["backward_passes"] = self._leaves(1)
        self.index = IndexCache(self.device)
        self.backward_seen = False  # set by settle(): a backward pass reached a tap this step
        self.per_token = torch.zeros_like(self.counts)
        per_token_views = _split(self.per_token, {n: (k,) for n, k in counts.items()})
        for name, values in (per_token or {}).items():
            per_token_views[name].copy_(torch.as_tensor(values, dtype=torch.int64))
        self.norm_grads = norm_grads
        self.norm = [self._norm_stats(site) for site in range(n_sites)]
        self.depth = (
            [self._depth_stats(site, sources_at(site)) for site in range(n_sites)]
            if sources_at is not None
            else []
        )

    def __deepcopy__(self, memo: dict) -> None:
        # A copy of a recorded model (e.g. copy.deepcopy(model)) records nothing: its forward
        # must not add into the original's step.
        return None

    # ---------------------------------------------------------------- adding (traceable)

    def add_sq(self, name: str, index: int, x: torch.Tensor) -> None:
        """sums[name][index] += Σx² in float32 (skipped while a checkpoint recomputes)."""
        if not _in_recompute():
            with torch.no_grad():
                sq = torch.linalg.vector_norm(x, dtype=torch.float32).square()
                self.views[name][index].add_(sq)

    def add(self, name: str, index: int | slice, value: torch.Tensor) -> None:
        """sums[name][index] += value (skipped while a checkpoint recomputes)."""
        if not _in_recompute():
            with torch.no_grad():
                self.views[name][index].add_(value)

    def count(self, name: str, index: int, n: int) -> None:
        """counts[name][index] += n (skipped while a checkpoint recomputes)."""
        if not _in_recompute():
            self.count_views[name][index].add_(n)

    def count_tokens(self, n_tokens: int) -> None:
        """Every ``per_token`` count += n_tokens × its elements per token: one op a forward."""
        if not _in_recompute():
            self.counts.add_(self.per_token, alpha=n_tokens)

    def tap(self, x: torch.Tensor, name: str, index: int, value: bool = True) -> torch.Tensor:
        """x itself, with ‖∂L/∂x‖² of every use of the returned tensor added into
        sums[name][index] when the step settles (value=False: only the hit is counted)."""
        if not (x.requires_grad and torch.is_grad_enabled()):
            return x
        sink = (self.sinks if value else self.presence)[name][index]
        return _Tap.apply(x, sink, value)

    def mark_output(self, x: torch.Tensor) -> torch.Tensor:
        """x itself; a backward pass through it counts as one of the step's backward passes."""
        return self.tap(x, "backward_passes", 0, value=False)

    # ---------------------------------------------------------------- the step (eager)

    def settle(self) -> None:
        """After the backward pass: move every tap's statistic into the sums (one add per
        segment) and count its hits; sets :attr:`backward_seen`. Call once per step."""
        seen = False
        for taps, is_value in ((self.sinks, True), (self.presence, False)):
            for name, sinks in taps.items():
                found = _take_grads(sinks)
                if found is None:
                    continue
                seen = True
                at, values = self.index(found[0]), found[1]
                hits = "backward_passes" if name == "backward_passes" else f"{name}_hits"
                if is_value:
                    self.views[name].index_add_(0, at, values)
                    values = torch.ones_like(values)
                self.count_views[hits].index_add_(0, at, values.round().to(torch.int64))
        self.backward_seen = seen

    def reset(self) -> None:
        """Zero every sum, count and sink for the next step."""
        self.sums.zero_()
        self.counts.zero_()
        for taps in (self.sinks, self.presence):
            for sinks in taps.values():
                _take_grads(sinks)
        self.backward_seen = False

    def _leaves(self, n: int) -> list[torch.Tensor]:
        return [torch.zeros((), device=self.device, requires_grad=True) for _ in range(n)]

    # ---------------------------------------------------------------- views for the ops

    def _norm_stats(self, site: int) -> NormStats:
        sq = self.views["norm_sq"][site : site + 1]
        if not self.norm_grads:
            return NormStats(sq)
        grad_sq = self.views["norm_grad_sq"][site : site + 1]
        return NormStats(sq, grad_sq, self.sinks["norm_grad_sq"][site])

    def _depth_stats(self, site: int, columns: tuple[int, ...]) -> DepthStats | None:
        """Views for the depth op at ``site``: its sources are the first columns, except a
        Block AttnRes partial sum, which always has the last column (so a column means the
        same source at every site)."""
        if not columns:
            return None
        row = self.views["depth_weight_sum"][site]
        last = row.shape[0] - 1
        leading = tuple(range(len(columns)))
        partial = columns != leading and columns[:-1] == leading[:-1] and columns[-1] == last
        if columns != leading and not partial:
            raise ValueError(f"site {site}: sources {columns} are not laid out as the ops need")
        return DepthStats(
            weight_sum=row[: len(columns) - partial],
            entropy_sum=self.views["depth_entropy_sum"][site : site + 1],
            partial_weight_sum=row[last:] if partial else None,
        )


def _take_grads(sinks: list[torch.Tensor]) -> tuple[tuple[int, ...], torch.Tensor] | None:
    """(indices, stacked gradients) of the sinks a backward pass reached, each released."""
    indices, values = [], []
    for index, sink in enumerate(sinks):
        if sink.grad is not None:
            indices.append(index)
            values.append(sink.grad)
            sink.grad = None
    return (tuple(indices), torch.stack(values)) if indices else None


def _split(buffer: torch.Tensor, shapes: Mapping[str, tuple[int, ...]]) -> dict:
    views, start = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        views[name] = buffer[start : start + size].view(shape)
        start += size
    return views


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
    return "triton" if x.is_cuda and _TRITON else "reference"


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


_TRITON = _triton_importable()


def _dispatch(x: torch.Tensor):
    if kernel_backend(x) == "triton":
        from attnres_probe.kernels import dispatch_triton

        return dispatch_triton
    return reference


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    rec: Recording | None = None,
    site: int | None = None,
) -> torch.Tensor:
    """``x / rms(x) * weight`` over the last dim. x [*, D], weight [D] -> [*, D]."""
    stats = None
    if rec is not None and site is not None and not _in_recompute():
        stats = NormStats(rec.norm[site].sq)
    return _dispatch(x).rms_norm(x, weight, eps, stats)


def add_rms_norm(
    x: torch.Tensor,
    update: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    rec: Recording | None = None,
    site: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add fused with RMSNorm: ``h = x + update``; returns ``(rms_norm(h), h)``."""
    stats = None if rec is None or site is None else rec.norm[site]
    if stats is not None and _in_recompute():
        # A checkpoint's recomputation: the forward statistic was taken in the forward; the
        # gradient one is still needed where the first forward built no graph (reentrant).
        stats = NormStats(None, stats.grad_sq, stats.sink)
    backend = _dispatch(x)
    normed, h = backend.add_rms_norm(x, update, weight, eps, stats)
    if stats is not None and stats.grad_sq is not None and backend is not reference:
        # The kernel adds the value in its backward; a backward pass through the normalised
        # output (always used, where h may not be after the last layer) counts the hit.
        normed = rec.tap(normed, "norm_grad_sq", site, value=False)
    return normed, h


def inv_rms(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """1 / sqrt(mean(x²) + eps) over the last dim: [*, D] -> [*] (float32, or float64)."""
    return reference.inv_rms(x, eps)


def attnres(
    sources: torch.Tensor,
    query: torch.Tensor,
    eps: float = 1e-6,
    rec: Recording | None = None,
    site: int | None = None,
    source_inv_rms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention over depth. sources [N, *, D], query [D] -> (out [*, D], weights [N, *]).

    keys = RMSNorm(sources) without a learned scale; weights = softmax_N(query · key);
    out = Σ_N weights · sources. source_inv_rms [N, *]: each source's :func:`inv_rms`, when the
    caller keeps it (computed once per source instead of once per op on the reference path).
    """
    stats = _depth_stats(rec, site)
    if isinstance(sources, torch.Tensor):
        return _dispatch(sources).attnres(sources, query, eps, stats, source_inv_rms)
    backend = _dispatch(sources[0])
    if backend is reference and not torch.compiler.is_compiling():
        return reference.attnres_over_sources(sources, query, eps, stats, source_inv_rms)
    # The kernels read one [N, *, D] tensor; a compiled graph fuses the stack into its reader.
    inv = None if source_inv_rms is None else torch.stack(source_inv_rms)
    return backend.attnres(torch.stack(sources), query, eps, stats, inv)


def block_attnres_phase1(
    blocks: torch.Tensor, queries: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Phase 1 of Block AttnRes: one pass over the completed blocks serves S queries.

    blocks [n, *, D], queries [S, D] -> (out [S, *, D] normalised over the n blocks,
    lse [S, *] float32 log-sum-exp of the logits, logits [S, n, *] float32).
    """
    return _dispatch(blocks).block_attnres_phase1(blocks, queries, eps)


def block_attnres_phase2(
    phase1_out: torch.Tensor,
    phase1_lse: torch.Tensor,
    block_logits: torch.Tensor,
    partial: torch.Tensor | None,
    query: torch.Tensor,
    eps: float = 1e-6,
    rec: Recording | None = None,
    site: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Phase 2: merge one sublayer's phase-1 result with the intra-block partial sum.

    phase1_out [*, D], phase1_lse [*], block_logits [n, *] (this query's phase-1 logits),
    partial [*, D] or None (first sublayer of a block), query [D]
    -> (out [*, D], weights [n + 1, *]) where the last weight row belongs to the partial sum
    (zero when there is none). Equal to :func:`attnres` over the blocks (+ ``partial``).
    """
    stats = _depth_stats(rec, site)
    return _dispatch(phase1_out).block_attnres_phase2(
        phase1_out, phase1_lse, block_logits, partial, query, eps, stats
    )


def _depth_stats(rec: Recording | None, site: int | None) -> DepthStats | None:
    if rec is None or site is None or not rec.depth or _in_recompute():
        return None
    return rec.depth[site]
