"""Where a probe's statistics come from: this project's models, or module hooks on any other.

Two tap sets with one interface (``shape``, ``layer_params``, ``query_params``, ``attach``,
``set_recording``, ``detach``):

* :class:`NativeTaps` for this project's models, with no module hooks: the probe hands the
  model its ``ops.Recording`` for recorded steps (``model.recording``), and the model's ops and
  forward add into it (hidden-state RMS and depth attention are what the ops compute anyway).
* :class:`ModuleTaps` for any other additive-residual decoder: hooks where discovery found
  each sublayer's stream and update (a norm's or the sublayer's input; the sublayer's,
  post-norm's or dropout's output), and on each decoder layer (input vs output stream, and the
  layer's output with its gradient). The hooks are registered once, when the probe attaches,
  and return at once on unrecorded steps.

Every statistic is a plain tensor op adding into the recording (gradients through
``Recording.tap``), so nothing here reads a device value on the host, and a compiled model
keeps its one graph per recorded / unrecorded step.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from attnres_probe import ops
from attnres_probe.hooks import wiring
from attnres_probe.hooks.discovery import (
    LayerDiscoveryError,
    LayerSpec,
    Sublayer,
    residual_position,
)
from attnres_probe.hooks.errors import ProbeWarning
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
    """Σ over tokens of cos(a_t, b_t), in float32: a, b [*, D] -> 0-d. Elementwise products and
    sums only: autocast would run a dot product (vecdot, matmul) in bf16."""
    with torch.no_grad():
        a, b = a.float(), b.float()
        norms = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
        return ((a * b).sum(-1) / norms.clamp_min(1e-8)).sum()


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

    def _projecting(self) -> bool:
        """Whether the hooks add the wiring check's projections: in a compiled graph always
        (one graph serves every recorded step, so nothing recompiles once the check is made),
        in eager until the check is made."""
        return torch.compiler.is_compiling() or not self.wiring_checked

    def check_wiring(self, rec: ops.Recording) -> None:
        """Nothing to check: this project's models record through their own ops."""

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
    """Statistics of any additive-residual decoder through hooks on its layers and on the
    modules where discovery found each sublayer's stream and update (``hooks.discovery``).

    Per sublayer: a pre-hook on its entry module (the stream it reads: Σx²), a hook on its exit
    module (the update it adds: Σu², with u = output − residual where the sublayer adds the
    stream itself, and a gradient tap on that output). Per layer: a hook seeing its input and
    output (cosine, Σy², a gradient tap on the output). Each also adds the wiring check's
    projections (``hooks.wiring``), read once, at the first recorded step."""

    def __init__(self, specs: list[LayerSpec], config: Any = None):
        layer_of, kinds, scales = [], [], []
        for index, spec in enumerate(specs):
            for sub in spec.sublayers:
                layer_of.append(index)
                kinds.append(sub.kind)
                scales.append(spec.update_scale)
        self.specs = specs
        self.config = config
        self.sources_at = None
        self.shape = ProbeShape(
            layer_of=tuple(layer_of),
            kinds=tuple(kinds),
            n_layers=len(specs),
            wiring=True,
            update_scale=tuple(scales) if any(s != 1.0 for s in scales) else (),
        )
        self.layer_params = [list(spec.module.parameters()) for spec in specs]
        self.query_params = []
        self.rec: ops.Recording | None = None
        self.wiring_checked = False

    def set_recording(self, rec: ops.Recording | None) -> None:
        self.rec = rec

    def recording_now(self) -> bool:
        return self.rec is not None

    def detach(self) -> None:
        self.set_recording(None)

    def attach(self, recorder: Any, handles: list[RemovableHandle]) -> None:
        # Each hook checks the module it fires on: copy.deepcopy(model) copies the hooks with
        # the modules, and a copy must not record into this model's step. A module serving
        # several sublayers (one norm read by parallel sublayers) gets one hook for all.
        entries: dict[int, tuple[nn.Module, list[int]]] = {}
        norm_outputs: dict[int, tuple[nn.Module, list[int]]] = {}
        inputs: dict[int, tuple[nn.Module, list[int]]] = {}
        exits: dict[int, tuple[nn.Module, int, Sublayer]] = {}
        index = 0
        for layer_index, spec in enumerate(self.specs):
            layer = spec.module
            handles.append(
                layer.register_forward_hook(
                    _only(layer, self._layer_hook(layer_index)), with_kwargs=True
                )
            )
            for sub in spec.sublayers:
                entries.setdefault(id(sub.entry), (sub.entry, []))[1].append(index)
                if sub.pre_norm is not None:
                    norm_outputs.setdefault(id(sub.pre_norm), (sub.pre_norm, []))[1].append(index)
                    first = sub.modules[0]
                    inputs.setdefault(id(first), (first, []))[1].append(index)
                if id(sub.exit) in exits:
                    raise LayerDiscoveryError(
                        f"layer {layer_index}: {type(sub.exit).__name__} is named as the update "
                        "of two sublayers; each sublayer needs a module of its own whose output "
                        "is its update"
                    )
                exits[id(sub.exit)] = (sub.exit, index, sub)
                index += 1
        for module, indices in entries.values():
            hook = _only(module, self._stream_hook(indices, "norm_sq", "wire_stream"))
            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        for module, indices in inputs.values():
            hook = _only(module, self._stream_hook(indices, None, "wire_sub_in"))
            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        for module, indices in norm_outputs.values():
            hook = _only(module, self._norm_output_hook(indices))
            handles.append(module.register_forward_hook(hook))
        for module, index, sub in exits.values():
            at = residual_position(sub.modules[-1]) if sub.adds_residual else None
            hook = _only(module, self._update_hook(index, sub.adds_residual, at))
            handles.append(module.register_forward_hook(hook, with_kwargs=True))

    def _stream_hook(self, indices: list[int], sq_name: str | None, wire_name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            rec = self.rec
            if rec is None or ops._in_recompute():
                return
            projecting = self._projecting()
            x = input_tensor(args, kwargs) if projecting or sq_name is not None else None
            if x is None:
                return
            projection = wiring.project(x) if projecting else None
            sq = sum_sq(x) if sq_name is not None else None
            for k in indices:
                if projecting:
                    rec.add(wire_name, k, projection)
                if sq_name is not None:
                    rec.add(sq_name, k, sq)
                    rec.count("norm_numel", k, x.numel())

        return hook

    def _norm_output_hook(self, indices: list[int]) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            rec = self.rec
            if rec is None or ops._in_recompute() or not self._projecting():
                return
            out = first_tensor(output)
            if out is None:
                return
            projection = wiring.project(out)
            for k in indices:
                rec.add("wire_norm_out", k, projection)

        return hook

    def _update_hook(self, index: int, adds_residual: bool, at: int | None) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            rec = self.rec
            out = None if rec is None else first_tensor(output)
            if out is None:
                return None
            if not ops._in_recompute():
                update = out
                if adds_residual:
                    residual = kwargs.get("residual")
                    if residual is None and at is not None and len(args) > at:
                        residual = args[at]
                    with torch.no_grad():
                        update = out.float() - residual.float()
                rec.add("update_sq", index, sum_sq(update))
                rec.count("update_numel", index, update.numel())
                if self._projecting():
                    rec.add("wire_update", index, wiring.project(update))
            return replace_first_tensor(output, tapped(rec, out, "grad_sq", index))

        return hook

    def _layer_hook(self, layer: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            rec = self.rec
            out = None if rec is None else first_tensor(output)
            if out is None:
                return None
            if not ops._in_recompute():
                projecting = self._projecting()
                x = input_tensor(args, kwargs)
                if x is not None and x.shape == out.shape:
                    rec.add("cos_sum", layer, cos_sum(x, out))
                    rec.count("cos_tokens", layer, out[..., 0].numel())
                    if projecting:
                        rec.add("wire_in", layer, wiring.project(x))
                rec.add("layer_out_sq", layer, sum_sq(out))
                rec.count("layer_out_numel", layer, out.numel())
                if projecting:
                    rec.add("wire_out", layer, wiring.project(out))
                    rec.count("wire_layer_calls", layer, 1)
            return replace_first_tensor(output, tapped(rec, out, "layer_grad_sq", layer))

        return hook

    def _projecting(self) -> bool:
        """Whether the hooks add the wiring check's projections: in a compiled graph always
        (one graph serves every recorded step, so nothing recompiles once the check is made),
        in eager until the check is made."""
        return torch.compiler.is_compiling() or not self.wiring_checked

    def check_wiring(self, rec: ops.Recording) -> None:
        """At the first recorded step that ran a layer: compare what discovery found with what
        the layers computed (one device->host copy); raise ``LayerDiscoveryError`` naming the
        first layer that does not match. Later steps cost nothing here."""
        if self.wiring_checked:
            return
        counts = {n: v.cpu().numpy() for n, v in rec.count_views.items() if _wired(n)}
        if not counts["wire_layer_calls"].any():
            return  # no forward yet (or none reached a layer): check at the next step
        self.wiring_checked = True
        sums = {n: v.cpu().numpy() for n, v in rec.views.items() if n.startswith("wire_")}
        checked, problems = wiring.check(
            self.specs, sums, counts, wiring.training_dropout(self.config)
        )
        errors = [p for p in problems if p.dropout is None]
        if errors:
            spec = self.specs[errors[0].layer]
            raise LayerDiscoveryError(wiring.error_message(spec, errors[0], len(errors) - 1))
        for problem in problems[:1]:
            warnings.warn(
                wiring.warning_message(self.specs[problem.layer], problem),
                ProbeWarning,
                stacklevel=3,
            )
        missing = sorted(set(range(len(self.specs))) - set(checked))
        if missing:
            warnings.warn(
                f"probe: layers {missing} did not run in the first recorded step, so their "
                "wiring was not checked against their input and output",
                ProbeWarning,
                stacklevel=3,
            )


def _wired(name: str) -> bool:
    return name in ("wire_layer_calls", "norm_numel", "update_numel")


def input_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The tensor a module is called on: its first positional argument, else ``hidden_states``,
    else the first tensor among its keyword arguments."""
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    x = kwargs.get("hidden_states")
    if isinstance(x, torch.Tensor):
        return x
    return first_tensor(kwargs)


def tapped(rec: ops.Recording, x: torch.Tensor, name: str, index: int) -> torch.Tensor:
    """x with a gradient tap, as a tensor of its own: a model may add into a module's output
    in place (Falcon adds the attention output into the MLP's), which a view made by the tap's
    autograd function forbids."""
    out = rec.tap(x, name, index)
    return out.clone() if out is not x else x


def sum_sq(x: torch.Tensor) -> torch.Tensor:
    """Σx² in float32 (0-d)."""
    with torch.no_grad():
        return torch.linalg.vector_norm(x, dtype=torch.float32).square()


def _only(module: nn.Module, hook: Callable) -> Callable:
    """``hook`` when it fires on ``module`` itself (not on a copy of it)."""

    def checked(fired_on: nn.Module, *args: Any) -> Any:
        if fired_on is module:
            return hook(fired_on, *args)
        return None

    return checked
