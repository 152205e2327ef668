"""Where a probe's statistics come from: the ops' stats slots, or plain module hooks.

Two tap sets with one interface (``shape``, ``layer_params``, ``attach``, ``begin_forward``,
``end_forward``, ``end_step``):

* :class:`NativeTaps` for this project's models, with no module hooks. Hidden-state RMS and
  depth attention come from the statistics the ops compute anyway (``ops.recording``; the
  slots' sums move into the step's row when the step closes); update RMS, the activation
  gradients (a tensor hook on each update) and the in/out cosine from the updates and streams
  the model hands to ``ops.observe_update`` / ``ops.observe_stream``.
* :class:`ModuleTaps` for any other PreNorm decoder: a pre-hook on each norm (hidden RMS),
  a hook on each sublayer (update RMS, and a tensor hook on its output for the gradient), and
  hooks on each decoder layer (input vs output stream).

Every hook and observer returns at once unless the recorder has a current row, i.e. outside
the forward pass of a recorded step; nothing here reads a device value on the host.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from attnres_probe import ops
from attnres_probe.hooks.discovery import LayerSpec
from attnres_probe.hooks.layout import MAX_PENDING_TENSORS, ProbeShape, StepRow, stackable

__all__ = ["NativeTaps", "ModuleTaps", "is_native", "first_tensor", "norm32"]


class Recorder(Protocol):
    row: StepRow | None  # the step being recorded, only while a recorded forward runs


def is_native(model: nn.Module) -> bool:
    """True for this project's models (they route statistics through ``ops``)."""
    cfg = getattr(model, "cfg", None)
    return (
        hasattr(cfg, "source_names")
        and hasattr(model, "hook_stream")
        and callable(getattr(model, "sublayers", None))
    )


def first_tensor(obj: Any) -> torch.Tensor | None:
    """The tensor a module output stands for: itself, or the first tensor in a tuple/mapping."""
    if isinstance(obj, torch.Tensor):
        return obj
    items = (
        obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, list | tuple) else ()
    )
    for item in items:
        if isinstance(item, torch.Tensor):
            return item
    return None


def norm32(x: torch.Tensor) -> torch.Tensor:
    """‖x‖₂ over every element, computed and returned in float32 (0-d, on x's device)."""
    return torch.linalg.vector_norm(x, dtype=torch.float32)


def token_norms(x: torch.Tensor) -> torch.Tensor:
    """‖x_t‖ per token: x [*, D] -> float32 [*]."""
    return torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32)


def token_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a_t · b_t per token: a, b [*, D] -> float32 [*]."""
    if a.dtype != torch.float32:
        a, b = a.float(), b.float()
    return torch.linalg.vecdot(a, b)


def cos_sum(dots: torch.Tensor, norms_a: torch.Tensor, norms_b: torch.Tensor) -> torch.Tensor:
    """Σ over tokens of cos = a·b / max(‖a‖‖b‖, 1e-8) from per-token dots and norms
    [..., N] -> [...]."""
    return (dots / (norms_a * norms_b).clamp_min(1e-8)).sum(-1)


def _grad_hook(row: StepRow, index: int) -> Callable:
    """Tensor hook on a sublayer output: ‖∂L/∂f‖ joins the row when autograd computes it (for
    outputs whose gradient is not retained, see :meth:`StepRow.keep_grad`)."""

    def hook(grad: torch.Tensor) -> None:
        row.add_norm("grad_sq", index, norm32(grad))
        row.counts["grad_hits"][index] += 1

    return hook


def _record_update(row: StepRow, index: int, f: torch.Tensor, with_grad: bool, defer: bool) -> None:
    """‖f‖ of sublayer ``index``'s output into the row (and a grad hook on f).

    defer: batch the norm with the other sublayers' (valid when nothing changes f in place).
    """
    if defer:
        row.add_tensor("update_sq", index, f)
    else:
        with torch.no_grad():
            row.add_norm("update_sq", index, norm32(f))
    row.counts["update_numel"][index] += f.numel()
    if with_grad and f.requires_grad and not row.keep_grad(index, f):
        f.register_hook(_grad_hook(row, index))


def _update_hook(rec: Recorder, index: int) -> Callable:
    """Forward hook on sublayer ``index`` of any decoder (see :func:`_record_update`)."""

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        row = rec.row
        if row is None:
            return
        f = first_tensor(output)
        if f is not None:
            _record_update(row, index, f, with_grad=True, defer=False)

    return hook


class _StreamPairs:
    """Accumulates cos(stream entering layer i, stream leaving it) per layer, for layers whose
    input and output the hooks see separately (any PreNorm decoder).

    Per stream one per-token norm, per layer one per-token dot; the cosines are formed and
    summed for all layers at once when the forward ends (:meth:`finish`).
    """

    def __init__(self, rec: Recorder):
        self.rec = rec
        self.inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> (x, ‖x_t‖)
        self.layers: list[int] = []
        self.terms: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.tokens: list[int] = []

    def clear(self) -> None:
        self.inputs.clear()
        self.layers.clear()
        self.terms.clear()
        self.tokens.clear()

    def enter(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Remember the stream entering ``layer``; returns its per-token norms."""
        with torch.no_grad():
            norms = token_norms(x)
        self.inputs[layer] = (x, norms)
        return norms

    def leave(self, layer: int, y: torch.Tensor, y_norms: torch.Tensor | None = None) -> None:
        """The stream leaving ``layer`` (its per-token norms, if already taken)."""
        entered = self.inputs.pop(layer, None)
        if entered is None or entered[0].shape != y.shape:
            return
        x, x_norms = entered
        with torch.no_grad():
            if y_norms is None:
                y_norms = token_norms(y)
            self.terms.append((token_dots(x, y), x_norms, y_norms))
        self.layers.append(layer)
        self.tokens.append(x_norms.numel())

    def finish(self, row: StepRow) -> None:
        if self.terms:
            with torch.no_grad():
                dots, norms_in, norms_out = (torch.stack(t) for t in zip(*self.terms, strict=True))
                sums = cos_sum(dots.flatten(1), norms_in.flatten(1), norms_out.flatten(1))
            _add_cos(row, self.layers, self.tokens, sums)
        self.clear()


def _add_cos(row: StepRow, layers: list[int], tokens: list[int], sums: torch.Tensor) -> None:
    row.add_vector("cos_sum", tuple(layers), sums)
    for layer, n in zip(layers, tokens, strict=True):
        row.counts["cos_tokens"][layer] += n


class _StreamChain(_StreamPairs):
    """The streams of this project's models: ``hook_stream[i]`` enters layer i and leaves
    layer i − 1. Small CPU streams are kept (autograd keeps them anyway) and reduced together
    when the forward ends, a few ops for all layers; others are reduced as they come."""

    def __init__(self, rec: Recorder):
        super().__init__(rec)
        self.kept: list[tuple[int, torch.Tensor]] = []

    def clear(self) -> None:
        super().clear()
        self.kept.clear()

    def add(self, row: StepRow, index: int, x: torch.Tensor) -> None:
        if self.kept and self.kept[-1][0] != index - 1:
            self.kept.clear()  # not the next stream of the same forward
        self.kept.append((index, x))
        if not stackable([self.kept[0][1], x]):
            self._reduce_each()
        elif len(self.kept) > MAX_PENDING_TENSORS:
            self._reduce_stacked(row, keep_last=True)

    def _reduce_each(self) -> None:
        """Per-stream reduction through enter/leave; only the last input stays referenced."""
        for index, x in self.kept:
            norms = self.enter(index, x)
            if index > 0:
                self.leave(index - 1, x, norms)
        last = self.kept[-1][0]
        self.kept = []
        self.inputs = {k: v for k, v in self.inputs.items() if k == last}

    def _reduce_stacked(self, row: StepRow, keep_last: bool) -> None:
        kept = self.kept
        if len(kept) >= 2:
            with torch.no_grad():
                streams = torch.stack([t for _, t in kept])  # [n, *, D]
                if streams.dtype != torch.float32:
                    streams = streams.float()
                norms = token_norms(streams).flatten(1)  # [n, tokens]
                dots = torch.linalg.vecdot(streams[:-1], streams[1:]).flatten(1)
                sums = cos_sum(dots, norms[:-1], norms[1:])
            layers = [index for index, _ in kept[:-1]]
            _add_cos(row, layers, [norms.shape[1]] * len(layers), sums)
        self.kept = kept[-1:] if keep_last else []

    def finish(self, row: StepRow) -> None:
        if self.kept:
            self._reduce_stacked(row, keep_last=False)
        super().finish(row)


class NativeTaps:
    """Statistics of this project's ``Transformer`` (any residual kind) from the ops' slots."""

    def __init__(self, model: nn.Module):
        cfg = model.cfg
        pairs = model.sublayers()
        for index, (norm, _) in enumerate(pairs):
            if getattr(norm, "site", None) != index:
                raise ValueError(
                    f"sublayer {index}'s norm has site={getattr(norm, 'site', None)}; the probe "
                    "needs norms numbered by sublayer (build the model with build_model)"
                )
        self.model = model
        self.pairs = pairs
        self.residual = cfg.residual
        n_sub = len(pairs)
        self.shape = ProbeShape(
            layer_of=tuple(index // 2 for index in range(n_sub)),
            kinds=tuple("attn" if index % 2 == 0 else "mlp" for index in range(n_sub)),
            n_layers=cfg.n_layers,
            source_names=tuple(cfg.source_names),
            source_mask=cfg.source_mask() if cfg.source_names else None,
            grad_from_norm=cfg.residual == "baseline",
        )
        queries = getattr(model, "depth_queries", None)
        self.layer_params = []
        for index, layer in enumerate(model.layers):
            params = list(layer.parameters())
            if queries is not None:  # the pseudo-queries feeding this layer's two sublayers
                for q in (queries[2 * index], queries[2 * index + 1]):
                    params += list(q.parameters())
            self.layer_params.append(params)
        device = next(model.parameters()).device
        # Σ(∂L/∂x)² at the norms is read only where it is the sublayer gradient (baseline).
        self.slots = ops.StatsSlots(
            self.shape.n_sites,
            max(1, self.shape.n_sources),
            device,
            norm_grads=self.shape.grad_from_norm,
        )
        self._grad_hooks = not self.shape.grad_from_norm  # ∂L/∂f from each f (not the norms)
        self._rec: Recorder | None = None
        self._streams: _StreamChain | None = None
        self._recording = None

    def attach(self, rec: Recorder, handles: list[RemovableHandle]) -> None:
        """No module hooks: the model hands its updates and streams to ``ops.observe_*``,
        which reach :meth:`update` and :meth:`stream` while the recording is open."""
        if self._streams is None or self._streams.rec is not rec:
            self._rec = rec
            self._streams = _StreamChain(rec)
            self.slots.observer = self

    def update(self, index: int, f: torch.Tensor) -> None:
        row = self._rec.row
        if row is not None:
            _record_update(row, index, f, self._grad_hooks, defer=True)

    def stream(self, index: int, h: torch.Tensor) -> None:
        row = self._rec.row
        if row is not None:
            self._streams.add(row, index, h)

    def begin_forward(self, row: StepRow) -> None:
        self._streams.clear()
        self._recording = ops.recording(self.slots)
        self._recording.__enter__()

    def end_forward(self, row: StepRow) -> None:
        if self._recording is not None:
            self._recording.__exit__(None, None, None)
            self._recording = None
        slots = self.slots
        row.counts["norm_numel"] += np.asarray(slots.norm_numel, dtype=np.int64)
        row.counts["depth_tokens"] += np.asarray(slots.depth_tokens, dtype=np.int64)
        for counts in (slots.norm_numel, slots.depth_tokens):
            counts[:] = [0] * len(counts)
        self._streams.finish(row)

    def end_step(self, row: StepRow) -> None:
        """Move the ops' sums (forward and backward) into the step's row: one add per slot."""
        slots = self.slots
        slots.settle()
        for name in slots.SLOTS:
            row.sums[name].add_(getattr(slots, name))
        slots.sums.zero_()


class ModuleTaps:
    """Statistics of any PreNorm decoder through hooks on its norms, sublayers and layers."""

    def __init__(self, specs: list[LayerSpec]):
        layer_of, kinds = [], []
        for index, spec in enumerate(specs):
            for kind, _, _ in spec.pairs:
                layer_of.append(index)
                kinds.append(kind)
        self.specs = specs
        self.shape = ProbeShape(layer_of=tuple(layer_of), kinds=tuple(kinds), n_layers=len(specs))
        self.layer_params = [list(spec.module.parameters()) for spec in specs]
        self._streams: _StreamPairs | None = None

    def attach(self, rec: Recorder, handles: list[RemovableHandle]) -> None:
        streams = self._streams = _StreamPairs(rec)
        index = 0
        for layer_index, spec in enumerate(self.specs):
            handles.append(
                spec.module.register_forward_pre_hook(
                    _layer_input_hook(streams, layer_index), with_kwargs=True
                )
            )
            handles.append(
                spec.module.register_forward_hook(_layer_output_hook(streams, layer_index))
            )
            for _, norm, sub in spec.pairs:
                handles.append(norm.register_forward_pre_hook(_norm_input_hook(rec, index)))
                handles.append(sub.register_forward_hook(_update_hook(rec, index)))
                index += 1

    def begin_forward(self, row: StepRow) -> None:
        self._streams.clear()

    def end_forward(self, row: StepRow) -> None:
        self._streams.finish(row)

    def end_step(self, row: StepRow) -> None:
        pass


def _norm_input_hook(rec: Recorder, index: int) -> Callable:
    def hook(module: nn.Module, args: tuple) -> None:
        row = rec.row
        if row is None or not args or not isinstance(args[0], torch.Tensor):
            return
        x = args[0]
        with torch.no_grad():
            row.add_norm("norm_sq", index, norm32(x))
        row.counts["norm_numel"][index] += x.numel()

    return hook


def _layer_input_hook(streams: _StreamPairs, layer: int) -> Callable:
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if streams.rec.row is None:
            return
        x = args[0] if args else kwargs.get("hidden_states")
        if isinstance(x, torch.Tensor):
            streams.enter(layer, x)

    return hook


def _layer_output_hook(streams: _StreamPairs, layer: int) -> Callable:
    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        if streams.rec.row is None:
            return
        out = first_tensor(output)
        if out is not None:
            streams.leave(layer, out)

    return hook
