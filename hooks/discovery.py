"""Finding the decoder layers of a model, the sublayers inside each, and where the probe reads a
sublayer's stream, update and gradient.

A decoder layer adds each sublayer's *update* to the residual stream. Where the probe reads them
depends on the layout, found from the layer's structure: its direct children (a *norm* is a child
whose class name contains "Norm"; a *sublayer* any other child holding parameters; a dropout a
parameter-free ``Dropout``) in the order its ``forward`` calls them (read from the source:
arguments before the call they feed, ``if`` branches on the module's own attributes followed as
they are set):

=========================  ======================  ================================================
layout                     call order              stream read at / update read at
=========================  ======================  ================================================
pre-norm (GPT-2, Llama)    N S N S                 the norm's input / the sublayer's output
sandwich (Gemma 2, 3)      N S N  N S N            the first norm's input / the post-norm's output
post-norm (OLMo 2)         S N S N                 the sublayer's input / the post-norm's output
parallel, one norm (Phi,   N S S                   the shared norm's input, for both / each output
GPT-J, Cohere, Falcon)
parallel, two norms        N N S S, or N S N S     each norm's input / each output
several children (OPT)     N S N S S               consecutive children of one kind are one
                                                   sublayer (fc1, fc2): the last one's output
residual inside (Bloom,    as above                the norm's input / output − its ``residual``
MPT)                                               argument (the sublayer adds the stream itself)
=========================  ======================  ================================================

A dropout called once right after a sublayer (GPT-NeoX, StableLM, MPT) is part of it: the update
is the dropout's output, what is added. The gradient statistic is taken on the tensor the update
is read from (for "residual inside", the sublayer's output, whose gradient is that of the update).
Where a family scales every update by a config value before adding it, :data:`UPDATE_SCALES`
names the value. What structure cannot show (parallel or sequential after N S N S, a norm applied
to the stream itself) the probe checks at the first recorded step (``hooks.wiring``).

The decoder layers are the longest ``nn.ModuleList`` whose every item is such a layer
(``transformer.h``, ``model.layers``). ``layers=`` overrides: a dotted path to the list
(``"transformer.h"``), a sequence of layer modules, or ``(layer, [...])`` tuples naming each
sublayer as a ``(norm, sublayer)`` pair (a pre-norm; norm None: the sublayer reads the stream
itself) or a :class:`Sublayer`.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = [
    "Sublayer",
    "LayerSpec",
    "LayerDiscoveryError",
    "discover_layers",
    "sublayer_kind",
    "UPDATE_SCALES",
]

# Config attributes known to scale every sublayer's update before the residual add (the one
# family-specific fact discovery uses): Granite adds ``residual_multiplier * f``.
UPDATE_SCALES = {"residual_multiplier": "Granite models add residual_multiplier × each update"}

LAYERS_HELP = (
    "pass layers= as a dotted path like 'model.layers', a list of layer modules, or "
    "[(layer, [(norm, sublayer), ...]), ...] (norm None where the sublayer reads the stream "
    "itself) or [(layer, [Sublayer(...), ...]), ...] (see docs/probe.md, 'Models')"
)


class LayerDiscoveryError(ValueError):
    """The probe could not find decoder layers, or what it found does not match what the model
    computes; the message says what it found and what to pass."""


@dataclass(frozen=True)
class Sublayer:
    """One sublayer of a decoder layer and where the probe reads it.

    kind: "attn", "mlp", ...; modules: its own modules in call order (one, or several such as
    OPT's fc1, fc2); pre_norm: the norm whose input is the stream entering it (None: its first
    module's input is the stream); post_norm: the norm applied to its output before the residual
    add; dropout: a dropout applied to its output before the add; adds_residual: its last module
    adds the stream itself (a ``residual`` argument), so its update is output − residual.
    exit: the module whose output the update is read from (default: the last of the modules,
    the post-norm or the dropout that runs).
    """

    kind: str
    modules: tuple[nn.Module, ...]
    pre_norm: nn.Module | None = None
    post_norm: nn.Module | None = None
    dropout: nn.Module | None = None
    adds_residual: bool = False
    exit: nn.Module | None = None

    def __post_init__(self):
        if isinstance(self.modules, nn.Module):
            object.__setattr__(self, "modules", (self.modules,))
        if not self.modules:
            raise LayerDiscoveryError(f"Sublayer({self.kind!r}) has no modules; name at least one")
        if self.exit is None:
            candidates = (self.dropout, self.post_norm, self.modules[-1])
            object.__setattr__(self, "exit", next(m for m in candidates if m is not None))

    @property
    def entry(self) -> nn.Module:
        """The module whose input is the stream entering the sublayer."""
        return self.pre_norm if self.pre_norm is not None else self.modules[0]


@dataclass(frozen=True)
class LayerSpec:
    """One decoder layer: its module, its sublayers in call order, a name for its layout, the
    factor each update is multiplied by before the residual add, and whether the sublayers are
    all of the layer's (``layers=`` may name some of them only)."""

    module: nn.Module
    sublayers: tuple[Sublayer, ...]
    layout: str = "given"
    update_scale: float = 1.0
    names: dict[int, str] = field(default_factory=dict, compare=False, repr=False)
    whole: bool = True  # every sublayer of the layer is named (else its output is not checked)

    def name_of(self, module: nn.Module | None) -> str:
        """The attribute name of ``module`` inside the layer (its class name if it has none)."""
        if module is None:
            return "none"
        return self.names.get(id(module), type(module).__name__)

    def describe(self) -> str:
        """e.g. ``pre-norm [input_layernorm → self_attn; post_attention_layernorm → mlp]``."""
        parts = []
        for sub in self.sublayers:
            chain = [self.name_of(sub.pre_norm)] if sub.pre_norm is not None else []
            chain.append("+".join(self.name_of(m) for m in sub.modules))
            chain += [self.name_of(m) for m in (sub.post_norm, sub.dropout) if m is not None]
            parts.append(" → ".join(chain) + (" (adds the residual)" if sub.adds_residual else ""))
        return f"{self.layout} [{'; '.join(parts)}]"


LayersArg = (
    str
    | Sequence[nn.Module]
    | Sequence[tuple[nn.Module, Sequence[tuple[nn.Module | None, nn.Module] | Sublayer]]]
)


def is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


def is_dropout(module: nn.Module) -> bool:
    return isinstance(module, nn.Dropout) or "dropout" in type(module).__name__.lower()


def has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def sublayer_kind(name: str, module: nn.Module) -> str:
    """ "attn" or "mlp" from the attribute name (falling back to the class name)."""
    text = f"{name} {type(module).__name__}".lower()
    if "attn" in text or "attention" in text:
        return "attn"
    words = ("mlp", "ffn", "feed_forward", "feedforward", "fc", "moe", "expert", "dense")
    if any(word in text for word in words):
        return "mlp"
    return name


# ----------------------------------------------------------------------------- call order


def call_order(layer: nn.Module) -> list[str] | None:
    """Names of ``layer``'s direct children in the order its ``forward`` calls them, with
    repeats (source order; a call's arguments before the call; an ``if`` on the module's own
    attributes followed as they are set, other branches both read; nested functions skipped);
    None without readable source."""
    function = _forward_ast(type(layer).forward)
    if function is None:
        return None
    names = {name for name, _ in layer.named_children()}
    order: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return  # its calls run whenever it is called, if ever
        if isinstance(node, ast.If | ast.IfExp):
            known, value = _static_value(node.test, layer)
            if known:
                taken = node.body if value else node.orelse
                for child in taken if isinstance(taken, list) else [taken]:
                    visit(child)
                return
        for child in ast.iter_child_nodes(node):
            visit(child)
        if isinstance(node, ast.Call):
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and func.value.id == "self"
                and func.attr in names
            ):
                order.append(func.attr)

    for statement in function.body:
        visit(statement)
    return order


@functools.cache
def _forward_ast(forward: Any) -> ast.FunctionDef | None:
    """The parsed source of a forward function (once per function), or None."""
    try:
        source = textwrap.dedent(inspect.getsource(inspect.unwrap(forward)))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return None
    function = tree.body[0] if tree.body else None
    return function if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef) else None


_COMPARE = {
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
    ast.Is: lambda a, b: a is b,
    ast.IsNot: lambda a, b: a is not b,
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}


def _static_value(node: ast.AST, layer: nn.Module) -> tuple[bool, Any]:
    """(True, value) of an expression made only of constants and the module's own attributes
    (``self.config.parallel_attn``, ``not self.x and self.y == 2``); (False, None) otherwise."""
    try:
        if isinstance(node, ast.Constant):
            return True, node.value
        if isinstance(node, ast.Name) and node.id == "self":
            return True, layer
        if isinstance(node, ast.Attribute):
            known, value = _static_value(node.value, layer)
            return (True, getattr(value, node.attr)) if known else (False, None)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            known, value = _static_value(node.operand, layer)
            return (True, not value) if known else (False, None)
        if isinstance(node, ast.BoolOp):
            values = [_static_value(v, layer) for v in node.values]
            if not all(known for known, _ in values):
                return False, None
            result = [v for _, v in values]
            return True, all(result) if isinstance(node.op, ast.And) else any(result)
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            (known_a, a), (known_b, b) = (
                _static_value(node.left, layer),
                _static_value(node.comparators[0], layer),
            )
            if known_a and known_b and type(node.ops[0]) in _COMPARE:
                return True, _COMPARE[type(node.ops[0])](a, b)
    except Exception:  # noqa: BLE001 - an attribute that is not there: the branch stays unknown
        return False, None
    return False, None


# ----------------------------------------------------------------------------- one layer


def analyse_layer(layer: nn.Module, update_scale: float = 1.0) -> LayerSpec | str:
    """The layer's :class:`LayerSpec`, or the reason it is not a decoder layer the probe can
    read (its children and what was expected)."""
    names = {id(m): n for n, m in layer.named_children()}
    children = dict(layer.named_children())
    if callable(getattr(layer, "sublayers", None)):  # a layer that names its (norm, sublayer)s
        pairs = [(n, s) for n, s in layer.sublayers()]
        return _given(layer, pairs, update_scale)
    roles = {}
    for name, child in children.items():
        if is_norm(child):
            roles[name] = "N"
        elif has_params(child):
            roles[name] = "S"
        elif is_dropout(child):
            roles[name] = "D"
    order = call_order(layer)
    if not order:  # no readable forward: registration order
        order = list(children)
    calls = [name for name in order if name in roles]
    times = {name: calls.count(name) for name in roles}
    seen: list[str] = []
    for name in calls:
        if name not in seen:
            seen.append(name)
    found = ", ".join(f"{n}: {type(m).__name__}" for n, m in children.items()) or "none"
    expected = (
        "expected direct children that are norms (class name containing 'Norm') and "
        "sublayers (attention, MLP), each sublayer with a norm before or after it"
    )
    if not any(roles[n] == "S" for n in seen):
        return f"it has no sublayer holding parameters among its children [{found}]; {expected}"
    if not any(roles[n] == "N" for n in seen):
        return f"it has no norm among its children [{found}]; {expected}"
    groups = _group_sublayers(seen, roles, children)
    tokens = _tokens(seen, roles, groups)
    post_style = any(t == "N" for t, _ in tokens[_last_group(tokens) + 1 :])
    sublayers, layouts = [], set()
    pending: list[str] = []
    carried: list[str] = []
    previous_pre: str | None = None
    for position, (token, value) in enumerate(tokens):
        if token == "N":
            if post_style and sublayers and _is_post(tokens, position):
                continue  # taken as the previous group's post-norm below
            pending.append(value)
            continue
        if token != "G":
            continue
        group = groups[value]
        pre = None
        if pending:
            pre, carried = pending[0], carried + pending[1:]
            layouts.add("parallel, a norm each" if len(pending) > 1 else "pre-norm")
        elif carried:
            pre, carried = carried[0], carried[1:]
        elif not post_style and previous_pre is not None:
            pre = previous_pre  # one norm read by parallel sublayers
            layouts.add("parallel, one norm")
        elif not post_style:
            return (
                f"its sublayer {group[0]} runs before any norm and no norm follows it "
                f"(children [{found}], call order {' → '.join(seen)}); {expected}"
            )
        pending = []
        post = _following(tokens, position, "N") if post_style else None
        if post_style and post is None:
            return (
                f"a norm follows its last sublayer but none follows {group[0]} (call order "
                f"{' → '.join(seen)}); expected a post-norm after every sublayer"
            )
        dropout = _following(tokens, position, "D", stop=("G",) if post_style else ("G", "N"))
        if dropout is not None and times[dropout] != 1:
            dropout = None  # one dropout module serving several sublayers: not this one's alone
        modules = tuple(children[n] for n in group)
        last = group[-1]
        # the update is read from whichever of its last module, post-norm and dropout runs last
        exit_name = max((n for n in (last, post, dropout) if n is not None), key=seen.index)
        sublayers.append(
            Sublayer(
                kind=sublayer_kind(group[0], children[group[0]]),
                modules=modules,
                pre_norm=children[pre] if pre is not None else None,
                post_norm=children[post] if post is not None else None,
                dropout=children[dropout] if dropout is not None else None,
                adds_residual=_adds_residual(children[last]),
                exit=children[exit_name],
            )
        )
        previous_pre = pre
    if carried:
        return f"its norms {carried} feed no sublayer (call order {' → '.join(seen)}); {expected}"
    if post_style:
        layouts = {"sandwich" if any(s.pre_norm is not None for s in sublayers) else "post-norm"}
    parallel = sorted(name for name in layouts if name.startswith("parallel"))
    layout = ", ".join(parallel or sorted(layouts)) or "pre-norm"
    if any(s.adds_residual for s in sublayers):
        layout += ", residual added inside"
    return LayerSpec(layer, tuple(sublayers), layout, update_scale, names)


def _group_sublayers(seen: list[str], roles: dict, children: dict) -> list[list[str]]:
    """Consecutive sublayer children of one kind (no norm between) as one sublayer."""
    groups: list[list[str]] = []
    previous = None
    for name in seen:
        role = roles[name]
        if role == "S":
            kind = sublayer_kind(name, children[name])
            if previous is not None and previous[0] == "S" and previous[1] == kind:
                groups[-1].append(name)
            else:
                groups.append([name])
            previous = ("S", kind)
        elif role == "N":
            previous = ("N", None)
    return groups


def _tokens(seen: list[str], roles: dict, groups: list[list[str]]) -> list[tuple[str, Any]]:
    """The call order as ("N", name), ("D", name) and ("G", group index) tokens."""
    first = {group[0]: index for index, group in enumerate(groups)}
    tokens = []
    for name in seen:
        if roles[name] == "S":
            if name in first:
                tokens.append(("G", first[name]))
        else:
            tokens.append((roles[name], name))
    return tokens


def _last_group(tokens: list) -> int:
    return max(i for i, (t, _) in enumerate(tokens) if t == "G")


def _following(tokens: list, position: int, want: str, stop: tuple = ("G",)) -> str | None:
    """The first ``want`` token after ``position`` before any ``stop`` token (dropouts and
    norms are looked past, unless named in ``stop``)."""
    for token, value in tokens[position + 1 :]:
        if token == want:
            return value
        if token in stop:
            return None
    return None


def _is_post(tokens: list, position: int) -> bool:
    """In a post-norm layout: the norm at ``position`` is the first norm after a sublayer."""
    for token, _ in reversed(tokens[:position]):
        if token == "G":
            return True
        if token == "N":
            return False
    return False


def _adds_residual(module: nn.Module) -> bool:
    """The module's forward takes a ``residual`` argument (it adds the stream itself)."""
    try:
        return "residual" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def residual_position(module: nn.Module) -> int | None:
    """Position of the ``residual`` argument among the forward's positional arguments."""
    try:
        params = list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return None
    return params.index("residual") if "residual" in params else None


def _given(layer: nn.Module, pairs: Sequence, update_scale: float) -> LayerSpec:
    """A LayerSpec from ``(norm, sublayer)`` pairs or :class:`Sublayer` items."""
    names = {id(m): n for n, m in layer.named_children()}
    sublayers = []
    for item in pairs:
        if isinstance(item, Sublayer):
            sublayers.append(item)
            continue
        norm, sub = item
        sublayers.append(
            Sublayer(
                kind=sublayer_kind(names.get(id(sub), ""), sub),
                modules=(sub,),
                pre_norm=norm,
                adds_residual=_adds_residual(sub),
            )
        )
    found = None if callable(getattr(layer, "sublayers", None)) else analyse_layer(layer)
    whole = not (isinstance(found, LayerSpec) and len(found.sublayers) > len(sublayers))
    return LayerSpec(layer, tuple(sublayers), "given", update_scale, names, whole)


# ----------------------------------------------------------------------------- the model


def update_scale_of(model: nn.Module) -> float:
    """The factor a model's config says each update is multiplied by (:data:`UPDATE_SCALES`)."""
    config = getattr(model, "config", None)
    for attr in UPDATE_SCALES:
        value = getattr(config, attr, None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return 1.0


def discover_layers(model: nn.Module, layers: LayersArg | None = None) -> list[LayerSpec]:
    """The decoder layers of ``model`` by the module rule, or as ``layers`` names them."""
    scale = update_scale_of(model)
    if layers is None:
        config = getattr(model, "config", None)
        if getattr(config, "is_encoder_decoder", False):
            raise LayerDiscoveryError(
                f"{type(model).__name__} is an encoder-decoder model; the probe records the "
                "residual stream of a decoder-only model (one stack of layers); " + LAYERS_HELP
            )
        return _find_layers(model, scale)
    if isinstance(layers, str):
        try:
            found = model.get_submodule(layers)
        except AttributeError as err:
            raise LayerDiscoveryError(f"layers={layers!r}: {err}; {LAYERS_HELP}") from None
        return [_spec(layer, i, scale) for i, layer in enumerate(found)]
    specs = []
    for i, item in enumerate(layers):
        if isinstance(item, nn.Module):
            specs.append(_spec(item, i, scale))
        else:
            layer, pairs = item
            specs.append(_given(layer, pairs, scale))
    if not specs or not all(spec.sublayers for spec in specs):
        raise LayerDiscoveryError(f"layers= gave no sublayers; {LAYERS_HELP}")
    return specs


def _spec(layer: nn.Module, index: int, scale: float) -> LayerSpec:
    found = analyse_layer(layer, scale)
    if isinstance(found, str):
        raise LayerDiscoveryError(
            f"layer {index} ({type(layer).__name__}) is not a decoder layer the probe can read: "
            f"{found}; {LAYERS_HELP}"
        )
    return found


def _find_layers(model: nn.Module, scale: float) -> list[LayerSpec]:
    best: list[LayerSpec] | None = None
    rejected: tuple[int, nn.Module, str] | None = None  # the largest list's rejected layer
    largest = 0
    cache: dict[type, bool] = {}
    for module in model.modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if best is not None and len(module) <= len(best):
            continue
        specs = []
        for index, layer in enumerate(module):
            if cache.get(type(layer)) is False:
                specs = None
                break
            found = analyse_layer(layer, scale)
            if isinstance(found, str):
                size = sum(p.numel() for p in module.parameters())
                if size > largest:
                    largest, rejected = size, (index, layer, found)
                cache[type(layer)] = False
                specs = None
                break
            specs.append(found)
        if specs:
            best = specs
    if best is None:
        if rejected is not None:
            index, layer, reason = rejected
            raise LayerDiscoveryError(
                f"found no decoder layers in {type(model).__name__}: its largest layer list "
                f"holds {type(layer).__name__} (item {index}), rejected because {reason}. "
                "Encoder layers that normalise inside their output sublayer (BERT-style) are "
                f"not a residual-stream decoder; {LAYERS_HELP}"
            )
        types = Counter(type(m).__name__ for m in model.modules())
        found = ", ".join(f"{name}×{n}" for name, n in types.most_common(12))
        raise LayerDiscoveryError(
            f"found no decoder layers in {type(model).__name__}: no nn.ModuleList holds layers "
            f"(module types found: {found}); {LAYERS_HELP}"
        )
    return best
