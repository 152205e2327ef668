"""The per-step record of a probe: where each running sum lives, and how sums become variables.

A recorded step is one row of a device-side float32 buffer (the *sums*) plus one row of a
host-side int64 array (the *counts*: element and token counts known from shapes, and how many
times a backward hook fired). Hooks only ever add into views of the current row, so recording
never syncs the device; :meth:`RowLayout.variables` turns whole flushes of rows into the run
run variables (the store's schema) on the host, once per flush.

Sites: ``n_sites = n_sublayers + 1``; site ``l < n_sublayers`` is the input of sublayer ``l``,
site ``n_sublayers`` the model output (the final norm, or the output AttnRes op).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from attnres_probe.kernels.reference import retain_grad_cheaply, take_retained_grads


@dataclass(frozen=True)
class ProbeShape:
    """What a probed model looks like to the record.

    layer_of [n_sublayers]: transformer layer of each sublayer; kinds [n_sublayers]: "attn" or
    "mlp"; source_names: depth sources of the AttnRes ops (empty: no depth attention);
    source_mask [n_sites, n_sources] bool: the source exists at that site;
    grad_from_norm: ``grad_norm[l]`` is read from the norm statistic of site ``l + 1``
    (baseline residual, where ∂L/∂f_l = ∂L/∂(h_l + f_l)) instead of a hook on f_l.
    """

    layer_of: tuple[int, ...]
    kinds: tuple[str, ...]
    n_layers: int
    source_names: tuple[str, ...] = ()
    source_mask: np.ndarray | None = field(default=None, compare=False)
    grad_from_norm: bool = False

    @property
    def n_sublayers(self) -> int:
        return len(self.layer_of)

    @property
    def n_sites(self) -> int:
        return self.n_sublayers + 1

    @property
    def n_sources(self) -> int:
        return len(self.source_names)


class RowLayout:
    """Named segments of a sums row (float32, device) and a counts row (int64, host)."""

    def __init__(self, shape: ProbeShape):
        self.shape = shape
        n_sub, n_sites, n_layers = shape.n_sublayers, shape.n_sites, shape.n_layers
        width = max(1, shape.n_sources)  # the ops' slots need at least one source column
        self.sum_segments = _segments(
            loss=(1,),
            norm_sq=(n_sites,),  # Σx² of the stream each norm receives
            norm_grad_sq=(n_sites,),  # Σ(∂L/∂x)² of that stream
            depth_weight_sum=(n_sites, width),  # Σ_tokens α
            source_rms_sum=(n_sites, width),  # Σ_tokens rms(v_i) (filled by the ops, unused)
            depth_entropy_sum=(n_sites,),  # Σ_tokens H(α)
            update_sq=(n_sub,),  # Σf² of each sublayer's output
            grad_sq=(n_sub,),  # Σ(∂L/∂f)² from a hook on each sublayer's output
            param_sq=(n_layers,),  # Σ over the layer's parameters of Σ grad²
            cos_sum=(n_layers,),  # Σ_tokens cos(stream in, stream out)
        )
        self.count_segments = _segments(
            loss=(1,),
            norm_numel=(n_sites,),
            depth_tokens=(n_sites,),
            update_numel=(n_sub,),
            grad_hits=(n_sub,),  # backward hooks fired on the sublayer output
            param_present=(n_layers,),  # layers with at least one parameter gradient
            cos_tokens=(n_layers,),
            backward_passes=(1,),  # backward passes that reached the model output
        )
        self.n_sums = _total(self.sum_segments)
        self.n_counts = _total(self.count_segments)

    def sum_views(self, row: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views into one sums row [n_sums], shaped like their segments."""
        return {n: row[a:b].view(shp) for n, (a, b, shp) in self.sum_segments.items()}

    def count_views(self, row: np.ndarray) -> dict[str, np.ndarray]:
        """Views into one counts row [n_counts], shaped like their segments."""
        return {n: row[a:b].reshape(shp) for n, (a, b, shp) in self.count_segments.items()}

    def sum_columns(self, name: str) -> slice:
        a, b, _ = self.sum_segments[name]
        return slice(a, b)

    def variables(
        self, sums: np.ndarray, counts: np.ndarray, grad_scale: float = 1.0
    ) -> dict[str, np.ndarray]:
        """Run variables for k recorded steps: sums [k, n_sums], counts [k, n_counts] -> arrays
        [k, ...] float32 (NaN where nothing was observed).

        ``grad_scale`` multiplies the squared activation-gradient sums: 1/world² under data
        parallelism, where each rank's loss is its local mean and gradients are averaged.
        """
        shape = self.shape
        k = sums.shape[0]
        s = {
            n: sums[:, a:b].astype(np.float64).reshape((k, *shp))
            for n, (a, b, shp) in self.sum_segments.items()
        }
        c = {
            n: counts[:, a:b].astype(np.float64).reshape((k, *shp))
            for n, (a, b, shp) in self.count_segments.items()
        }
        n_sub = shape.n_sublayers
        out: dict[str, np.ndarray] = {
            "loss": _mean(s["loss"][:, 0], c["loss"][:, 0]),
            "hidden_rms": np.sqrt(_mean(s["norm_sq"][:, :n_sub], c["norm_numel"][:, :n_sub])),
            "update_rms": np.sqrt(_mean(s["update_sq"], c["update_numel"])),
        }
        if shape.grad_from_norm:
            grad_sq = s["norm_grad_sq"][:, 1:]
            seen = np.broadcast_to(c["backward_passes"] > 0, grad_sq.shape)
        else:
            grad_sq = s["grad_sq"]
            seen = c["grad_hits"] > 0
        out["grad_norm"] = np.where(seen, np.sqrt(grad_sq * grad_scale), np.nan)
        out["param_grad_norm"] = np.where(c["param_present"] > 0, np.sqrt(s["param_sq"]), np.nan)
        out["cos_in_out"] = _mean(s["cos_sum"], c["cos_tokens"])
        used = ["loss", "norm_sq", "update_sq", "param_sq", "cos_sum"]
        used.append("norm_grad_sq" if shape.grad_from_norm else "grad_sq")
        if shape.n_sources:
            tokens = c["depth_tokens"]  # [k, n_sites]
            weights = _mean(s["depth_weight_sum"], tokens[:, :, None])
            if shape.source_mask is not None:
                weights = np.where(shape.source_mask[None], weights, np.nan)
            entropy = _mean(s["depth_entropy_sum"], tokens)
            out["depth_weights"] = weights[:, :n_sub]
            out["depth_entropy"] = entropy[:, :n_sub]
            out["depth_weights_out"] = weights[:, n_sub]
            out["depth_entropy_out"] = entropy[:, n_sub]
            used += ["depth_weight_sum", "depth_entropy_sum"]
        nonfinite = sum((~np.isfinite(s[name])).reshape(k, -1).sum(1) for name in used)
        out["nonfinite"] = np.asarray(nonfinite, dtype=np.float64)
        return {name: value.astype(np.float32) for name, value in out.items()}

    def dims(self) -> dict[str, tuple[str, ...]]:
        """The variables :meth:`variables` returns and their dims (``step`` first)."""
        dims = {
            "loss": ("step",),
            "hidden_rms": ("step", "sublayer"),
            "update_rms": ("step", "sublayer"),
            "grad_norm": ("step", "sublayer"),
            "param_grad_norm": ("step", "layer"),
            "cos_in_out": ("step", "layer"),
            "nonfinite": ("step",),
        }
        if self.shape.n_sources:
            dims |= {
                "depth_weights": ("step", "sublayer", "source"),
                "depth_entropy": ("step", "sublayer"),
                "depth_weights_out": ("step", "source"),
                "depth_entropy_out": ("step",),
            }
        return dims


def _segments(**shapes: tuple[int, ...]) -> dict[str, tuple[int, int, tuple[int, ...]]]:
    out, start = {}, 0
    for name, shp in shapes.items():
        size = int(np.prod(shp))
        out[name] = (start, start + size, shp)
        start += size
    return out


def _total(segments: dict[str, tuple[int, int, tuple[int, ...]]]) -> int:
    return max((b for _, b, _ in segments.values()), default=0)


def _mean(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, total / np.where(count > 0, count, 1), np.nan)


@dataclass
class StepRow:
    """The step being recorded: views hooks add into (see :class:`RowLayout`), and 0-d terms
    that hooks leave to be summed into a segment with one op per forward/step (:meth:`commit`).

    ``sq_terms[name]`` holds (index, norm) pairs whose squares add into ``sums[name][index]``;
    ``sum_terms[name]`` (index, value) pairs that add as they are.
    """

    sums: dict[str, torch.Tensor]
    counts: dict[str, np.ndarray]
    sq_terms: dict[str, tuple[list[int], list[torch.Tensor]]] = field(default_factory=dict)
    sum_terms: dict[str, tuple[list[int], list[torch.Tensor]]] = field(default_factory=dict)
    tensors: dict[str, tuple[list[int], list[torch.Tensor]]] = field(default_factory=dict)
    vectors: list[tuple[str, tuple[int, ...], torch.Tensor]] = field(default_factory=list)
    kept_grads: list[tuple[int, torch.Tensor]] = field(default_factory=list)

    def keep_grad(self, index: int, f: torch.Tensor) -> bool:
        """Retain ∂L/∂f of sublayer ``index``'s output for :meth:`settle_grads` where that is
        cheap (``reference.retain_grad_cheaply``); False: the caller hooks f instead."""
        if not retain_grad_cheaply(f):
            return False
        self.kept_grads.append((index, f))
        return True

    def settle_grads(self) -> None:
        """After the backward pass: ‖∂L/∂f‖² of every retained output into ``grad_sq``
        (reduced together at the next commit) and each one counted as a gradient hit."""
        kept, self.kept_grads = self.kept_grads, []
        for index, grad in zip(*take_retained_grads(kept), strict=True):
            self.add_tensor("grad_sq", index, grad)
            self.counts["grad_hits"][index] += 1

    def add_norm(self, name: str, index: int, norm: torch.Tensor) -> None:
        """``sums[name][index] += norm²`` at the next commit; norm: float32 0-d."""
        _append(self.sq_terms, name, index, norm)

    def add_value(self, name: str, index: int, value: torch.Tensor) -> None:
        """``sums[name][index] += value`` at the next commit; value: float32 0-d."""
        _append(self.sum_terms, name, index, value)

    def add_vector(self, name: str, indices: tuple[int, ...], values: torch.Tensor) -> None:
        """``sums[name][indices] += values`` at the next commit; values: float32 [len(indices)]."""
        self.vectors.append((name, indices, values))

    def add_tensor(self, name: str, index: int, x: torch.Tensor) -> None:
        """``sums[name][index] += Σx²`` at the next commit, all pending tensors in one
        ``_foreach_norm``; only for tensors nothing modifies in place before the commit."""
        _append(self.tensors, name, index, x)
        if len(self.tensors[name][1]) >= MAX_PENDING_TENSORS:
            self._norm_tensors()

    def commit(self, index_tensor: Callable[[tuple[int, ...]], torch.Tensor]) -> None:
        """Add every pending term into its segment; ``index_tensor`` gives a cached device
        tensor for an index tuple (so no host->device copy happens per step)."""
        self._norm_tensors()
        for terms, square in ((self.sq_terms, True), (self.sum_terms, False)):
            for name, (indices, values) in terms.items():
                if not values:
                    continue
                stacked = torch.stack(values)
                if square:
                    stacked = stacked.square()
                self.sums[name].index_add_(0, index_tensor(tuple(indices)), stacked)
                indices.clear()
                values.clear()
        for name, indices, values in self.vectors:
            self.sums[name].index_add_(0, index_tensor(indices), values)
        self.vectors.clear()

    def _norm_tensors(self) -> None:
        for name, (indices, values) in self.tensors.items():
            if values:
                with torch.no_grad():
                    self.add_vector(name, tuple(indices), batched_norms(values).square())
                indices.clear()
                values.clear()


# Pending tensors held at most before their norms are taken (bounds the memory kept alive).
MAX_PENDING_TENSORS = 16
# On CPU, equal-shaped tensors of at most this many elements each are stacked and reduced in
# one op: at small sizes the per-op overhead costs more than the copy; above it the copy costs
# more (measured at 8192 elements: stacked 49 µs vs 60 µs per tensor for 16 of them; at 16384:
# 129 µs vs 80 µs).
STACK_NUMEL = 1 << 13


def stackable(values: list[torch.Tensor]) -> bool:
    """Whether ``values`` are reduced best stacked: small CPU tensors of one shape and dtype."""
    first = values[0]
    return (
        first.device.type == "cpu"
        and first.numel() <= STACK_NUMEL
        and all(v.shape == first.shape and v.dtype == first.dtype for v in values)
    )


def batched_norms(values: list[torch.Tensor]) -> torch.Tensor:
    """‖v‖₂ of each tensor as float32 [len(values)], in as few ops as the device allows."""
    if stackable(values):
        return torch.linalg.vector_norm(torch.stack(values).flatten(1), dim=1, dtype=torch.float32)
    return torch.stack(torch._foreach_norm(values, 2, dtype=torch.float32))


def _append(terms: dict, name: str, index: int, value: torch.Tensor) -> None:
    indices, values = terms.setdefault(name, ([], []))
    indices.append(index)
    values.append(value)
