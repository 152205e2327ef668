"""Finding the decoder layers of a PreNorm model and the (norm, sublayer) pairs inside each.

Rule, for models that are not this project's (those expose ``sublayers()`` and stats slots):

1. The decoder layers are the longest ``nn.ModuleList`` whose items all have one type and each
   hold at least one (norm, sublayer) pair (GPT-2: ``transformer.h``; Llama: ``model.layers``).
2. Inside a layer, a *norm* is a direct child whose class name contains "Norm" (LayerNorm,
   RMSNorm, LlamaRMSNorm, ...); a *sublayer* is any other direct child holding parameters. The
   i-th norm (in registration order) feeds the i-th sublayer; the counts must match. This pairs
   GPT-2's ``ln_1/attn, ln_2/mlp`` and Llama's ``input_layernorm/self_attn,
   post_attention_layernorm/mlp`` alike. A layer with a ``sublayers()`` method gives its pairs
   itself.

``layers=`` overrides step 1 or both: a dotted attribute path to the list (``"transformer.h"``),
a sequence of layer modules (pairs found by step 2), or a sequence of
``(layer, [(norm, sublayer), ...])`` tuples naming everything explicitly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

__all__ = ["LayerSpec", "LayerDiscoveryError", "discover_layers", "sublayer_kind"]


class LayerDiscoveryError(ValueError):
    """The probe could not find decoder layers; the message says what it found and what to pass."""


@dataclass(frozen=True)
class LayerSpec:
    """One decoder layer: its module and its (kind, norm, sublayer) triples in call order."""

    module: nn.Module
    pairs: tuple[tuple[str, nn.Module, nn.Module], ...]


LayersArg = (
    str | Sequence[nn.Module] | Sequence[tuple[nn.Module, Sequence[tuple[nn.Module, nn.Module]]]]
)


def is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


def sublayer_kind(name: str, module: nn.Module) -> str:
    """ "attn" or "mlp" from the attribute name (falling back to the class name)."""
    text = f"{name} {type(module).__name__}".lower()
    if "attn" in text or "attention" in text:
        return "attn"
    if any(word in text for word in ("mlp", "ffn", "feed_forward", "feedforward", "fc")):
        return "mlp"
    return name


def layer_pairs(layer: nn.Module) -> tuple[tuple[str, nn.Module, nn.Module], ...] | None:
    """The (kind, norm, sublayer) triples of one layer, or None when the rule finds none."""
    names = {id(m): n for n, m in layer.named_children()}
    if callable(getattr(layer, "sublayers", None)):
        pairs = layer.sublayers()
        return tuple((sublayer_kind(names.get(id(s), ""), s), n, s) for n, s in pairs) or None
    norms, others = [], []
    for name, child in layer.named_children():
        if is_norm(child):
            norms.append(child)
        elif any(True for _ in child.parameters()):
            others.append((name, child))
    if not norms or len(norms) != len(others):
        return None
    return tuple((sublayer_kind(name, s), n, s) for n, (name, s) in zip(norms, others, strict=True))


def discover_layers(model: nn.Module, layers: LayersArg | None = None) -> list[LayerSpec]:
    """The decoder layers of ``model`` by the module rule, or as ``layers`` names them."""
    if layers is None:
        return [_spec(layer, i) for i, layer in enumerate(_find_layer_list(model))]
    if isinstance(layers, str):
        found = model.get_submodule(layers)
        return [_spec(layer, i) for i, layer in enumerate(found)]
    specs = []
    for i, item in enumerate(layers):
        if isinstance(item, nn.Module):
            specs.append(_spec(item, i))
        else:
            layer, pairs = item
            names = {id(m): n for n, m in layer.named_children()}
            specs.append(
                LayerSpec(
                    layer, tuple((sublayer_kind(names.get(id(s), ""), s), n, s) for n, s in pairs)
                )
            )
    if not specs or not all(spec.pairs for spec in specs):
        raise LayerDiscoveryError(
            "layers= gave no (norm, sublayer) pairs; pass layer modules, a dotted path such as "
            "'transformer.h', or [(layer, [(norm, sublayer), ...]), ...]"
        )
    return specs


def _spec(layer: nn.Module, index: int) -> LayerSpec:
    pairs = layer_pairs(layer)
    if pairs is None:
        children = ", ".join(f"{n}: {type(m).__name__}" for n, m in layer.named_children())
        raise LayerDiscoveryError(
            f"layer {index} ({type(layer).__name__}) has no (norm, sublayer) pairs: its children "
            f"are [{children}]; pass layers=[(layer, [(norm, sublayer), ...]), ...] to name them"
        )
    return LayerSpec(layer, pairs)


def _find_layer_list(model: nn.Module) -> nn.ModuleList:
    best: nn.ModuleList | None = None
    for module in model.modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(m) for m in module}) != 1 or layer_pairs(module[0]) is None:
            continue
        if best is None or len(module) > len(best):
            best = module
    if best is None:
        types = Counter(type(m).__name__ for m in model.modules())
        found = ", ".join(f"{name}×{n}" for name, n in types.most_common(12))
        raise LayerDiscoveryError(
            f"found no decoder layers in {type(model).__name__}: no nn.ModuleList whose items "
            f"each hold (norm, sublayer) pairs (module types found: {found}); pass layers= "
            "as a dotted path like 'transformer.h', a list of layer modules, or "
            "[(layer, [(norm, sublayer), ...]), ...]"
        )
    return best
