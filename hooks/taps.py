"""Where a probe's statistics come from: this project's models, or module hooks on any other.

Two tap sets with one interface (``shape``, ``layer_params``, ``query_params``, ``attach``,
``set_recording``, ``detach``):

* :class:`NativeTaps` for this project's models, with no module hooks: the probe hands the
  model its ``ops.Recording`` for recorded steps (``model.recording``), and the model's ops and
  forward add into it (hidden-state RMS and depth attention are what the ops compute anyway).
* :class:`ModuleTaps` for any other PreNorm decoder: a pre-hook on each norm (hidden RMS), a
  hook on each sublayer (update RMS, and a gradient tap on its output), hooks on each decoder
  layer (input vs output stream, and the layer's output with its gradient). The hooks are
  registered once, when the probe attaches, and return at once on unrecorded steps.

Every statistic is a plain tensor op adding into the recording (gradients through
``Recording.tap``), so nothing here reads a device value on the host, and a compiled model
keeps its one graph per recorded / unrecorded step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from attnres_probe import ops
from attnres_probe.hooks.discovery import LayerSpec
from attnres_probe.hooks.layout import ProbeShape, RowLayout

__all__ = [
    "NativeTaps",
    "ModuleTaps",
    "is_native",
    "native_recording",
    "first_tensor",
    "replace_first_tensor",
]


def is_native(model: nn.Module) -> bool:
    """True for this project's models (they take a recording and route statistics through
    ``ops``)."""
    cfg = getattr(model, "cfg", None)
    return (
        hasattr(cfg, "sources_at")
        and hasattr(model, "recording")
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


def replace_first_tensor(obj: Any, new: torch.Tensor) -> Any:
    """``obj`` with the tensor :func:`first_tensor` finds replaced by ``new``."""
    if isinstance(obj, torch.Tensor):
        return new
    if isinstance(obj, list | tuple):
        items = list(obj)
        for i, item in enumerate(items):
            if isinstance(item, torch.Tensor):
                items[i] = new
                break
        return type(obj)(items) if isinstance(obj, list) else tuple(items)
    if isinstance(obj, Mapping):
        for key, item in obj.items():
            if isinstance(item, torch.Tensor):
                obj[key] = new  # ModelOutput and dicts: the field is replaced in place
                break
    return obj


def cos_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ over tokens of cos(a_t, b_t), in float32: a, b [*, D] -> 0-d."""
    with torch.no_grad():
        a, b = a.float(), b.float()
        norms = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
        return (torch.linalg.vecdot(a, b) / norms.clamp_min(1e-8)).sum()


class NativeTaps:
    """Statistics of this project's ``Transformer`` (any residual kind) through its recording."""

    def __init__(self, model: nn.Module):
        cfg = model.cfg
        for index, (norm, _) in enumerate(model.sublayers()):
            if getattr(norm, "site", None) != index:
                raise ValueError(
                    f"sublayer {index}'s norm has site={getattr(norm, 'site', None)}; the probe "
                    "needs norms numbered by sublayer (build the model with build_model)"
                )
        self.model = model
        self.sources_at = cfg.sources_at if cfg.source_names else None
        n_sub = cfg.n_sublayers
        self.shape = ProbeShape(
            layer_of=tuple(index // 2 for index in range(n_sub)),
            kinds=tuple("attn" if index % 2 == 0 else "mlp" for index in range(n_sub)),
            n_layers=cfg.n_layers,
            residual=cfg.residual,
            source_names=tuple(cfg.source_names),
            source_mask=cfg.source_mask() if cfg.source_names else None,
            grad_from_norm=cfg.residual == "baseline",
            layer_output={"baseline": "stream", "full": "update", "block": "own"}[cfg.residual],
            layer_grad="update",
            width=cfg.d_model,
        )
        self.layer_params = [list(layer.parameters()) for layer in model.layers]
        queries = getattr(model, "depth_queries", None)
        self.query_params = [list(q.parameters()) for q in queries] if queries is not None else []

    def attach(self, recorder: Any, handles: list[RemovableHandle]) -> None:
        self.model.recording = None

    def set_recording(self, rec: ops.Recording | None) -> None:
        self.model.recording = rec

    def recording_now(self) -> bool:
        return self.model.recording is not None

    def detach(self) -> None:
        self.model.recording = None


def native_recording(model: nn.Module) -> ops.Recording:
    """The recording a probe gives this project's ``model`` (its layout, on its device): set it
    as ``model.recording`` to take the statistics without a probe (benchmarks, tests), then
    ``settle()`` after backward and ``reset()`` per step."""
    taps = NativeTaps(model)
    device = next(model.parameters()).device
    return RowLayout(taps.shape).recording(device, taps.sources_at)


class ModuleTaps:
    """Statistics of any PreNorm decoder through hooks on its norms, sublayers and layers."""

    def __init__(self, specs: list[LayerSpec]):
        layer_of, kinds = [], []
        for index, spec in enumerate(specs):
            for kind, _, _ in spec.pairs:
                layer_of.append(index)
                kinds.append(kind)
        self.specs = specs
        self.sources_at = None
        self.shape = ProbeShape(layer_of=tuple(layer_of), kinds=tuple(kinds), n_layers=len(specs))
        self.layer_params = [list(spec.module.parameters()) for spec in specs]
        self.query_params = []
        self.rec: ops.Recording | None = None
        self._inputs: dict[int, torch.Tensor] = {}  # layer -> the stream entering it

    def set_recording(self, rec: ops.Recording | None) -> None:
        self.rec = rec
        self._inputs.clear()

    def recording_now(self) -> bool:
        return self.rec is not None

    def detach(self) -> None:
        self.set_recording(None)

    def attach(self, recorder: Any, handles: list[RemovableHandle]) -> None:
        # Each hook checks the module it fires on: copy.deepcopy(model) copies the hooks with
        # the modules, and a copy must not record into this model's step.
        index = 0
        for layer_index, spec in enumerate(self.specs):
            layer = spec.module
            handles.append(
                layer.register_forward_pre_hook(
                    _only(layer, self._layer_input_hook(layer_index)), with_kwargs=True
                )
            )
            handles.append(
                layer.register_forward_hook(_only(layer, self._layer_output_hook(layer_index)))
            )
            for _, norm, sub in spec.pairs:
                handles.append(
                    norm.register_forward_pre_hook(_only(norm, self._norm_input_hook(index)))
                )
                handles.append(sub.register_forward_hook(_only(sub, self._update_hook(index))))
                index += 1

    def _norm_input_hook(self, index: int) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            rec = self.rec
            if rec is None or not args or not isinstance(args[0], torch.Tensor):
                return
            rec.add_sq("norm_sq", index, args[0])
            rec.count("norm_numel", index, args[0].numel())

        return hook

    def _update_hook(self, index: int) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            rec = self.rec
            f = None if rec is None else first_tensor(output)
            if f is None:
                return None
            rec.add_sq("update_sq", index, f)
            rec.count("update_numel", index, f.numel())
            return replace_first_tensor(output, rec.tap(f, "grad_sq", index))

        return hook

    def _layer_input_hook(self, layer: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if self.rec is None:
                return
            x = args[0] if args else kwargs.get("hidden_states")
            if isinstance(x, torch.Tensor):
                self._inputs[layer] = x

        return hook

    def _layer_output_hook(self, layer: int) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            rec = self.rec
            out = None if rec is None else first_tensor(output)
            if out is None:
                return None
            x = self._inputs.pop(layer, None)
            if x is not None and x.shape == out.shape:
                rec.add("cos_sum", layer, cos_sum(x, out))
                rec.count("cos_tokens", layer, out[..., 0].numel())
            rec.add_sq("layer_out_sq", layer, out)
            rec.count("layer_out_numel", layer, out.numel())
            return replace_first_tensor(output, rec.tap(out, "layer_grad_sq", layer))

        return hook


def _only(module: nn.Module, hook: Callable) -> Callable:
    """``hook`` when it fires on ``module`` itself (not on a copy of it)."""

    def checked(fired_on: nn.Module, *args: Any) -> Any:
        if fired_on is module:
            return hook(fired_on, *args)
        return None

    return checked
