"""The wiring check: at the first recorded step, what discovery found is compared with what each
layer computed, so that a probe never records a silently wrong tensor.

The hooks add, for every recorded step, a few linear functionals (:func:`project`: the column
sums of at most ``CHECK_ROWS`` token rows against ``PROJECTIONS`` fixed cosine waves over the
model width) of each layer's input and output, each sublayer's stream, update, pre-norm output
and input. Being linear, they satisfy what the layer satisfies elementwise, up to rounding:

* the layer's output is its input plus the recorded updates (× the update scale);
* the stream read for a sublayer is the layer's input plus the updates of the sublayers before
  it (sequential), or the layer's input (parallel);
* a sublayer reads its pre-norm's output.

:func:`check` reads them once, at the first recorded step with a forward (one device→host copy),
and returns what did not hold. Where the model trains with dropout between a sublayer and the
residual add (a config dropout that no module of the layer applies), the first relation cannot
hold exactly; that is reported as a warning instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from attnres_probe.hooks.discovery import LAYERS_HELP, LayerSpec

__all__ = ["PROJECTIONS", "CHECK_ROWS", "project", "check", "tolerance", "WiringProblem"]

PROJECTIONS = 4
CHECK_ROWS = 256
# Fixed, irrational frequencies: no sum of streams cancels in all four at once by accident.
_WAVES = ((0.7548776662, 0.3), (0.5698402910, 1.1), (0.6180339887, 2.0), (0.4142135624, 2.9))


def project(x: torch.Tensor) -> torch.Tensor:
    """[PROJECTIONS] float32 linear functionals of x [*, D] (the same for every tensor of one
    width): column sums of its first ``CHECK_ROWS`` rows against fixed cosine waves over D.
    Elementwise products and sums only, so autocast leaves them in float32."""
    with torch.no_grad():
        rows = x.detach().reshape(-1, x.shape[-1])[:CHECK_ROWS]
        columns = rows.sum(0, dtype=torch.float32)  # [D]
        d = torch.arange(columns.shape[0], device=columns.device, dtype=torch.float32)
        waves = torch.stack([torch.cos(d * f + phase) for f, phase in _WAVES], 1)  # [D, P]
        return (columns[:, None] * waves).sum(0)


def tolerance(layer: torch.nn.Module) -> float:
    """Relative tolerance of the check: rounding of the layer's own residual adds."""
    dtype = next((p.dtype for p in layer.parameters() if p.is_floating_point()), torch.float32)
    return 1e-3 if torch.finfo(dtype).bits >= 32 else 2e-2


@dataclass(frozen=True)
class WiringProblem:
    """What did not hold in one layer; ``dropout`` names a training dropout that explains a
    mismatch of the updates (then it is a warning, not an error)."""

    layer: int
    message: str
    dropout: str | None = None


def check(
    specs: list[LayerSpec],
    sums: dict[str, np.ndarray],
    counts: dict[str, np.ndarray],
    dropout: str | None = None,
) -> tuple[list[int], list[WiringProblem]]:
    """(layers checked, problems found) from one step's wiring sums [n, P] and counts.

    A layer is checked when it ran in the step; ``dropout`` (e.g. "OPTConfig.dropout=0.1"):
    the model trains with a dropout no module applies, so update mismatches are warnings."""
    checked, problems = [], []
    first = 0
    for index, spec in enumerate(specs):
        subs = range(first, first + len(spec.sublayers))
        first += len(spec.sublayers)
        if counts["wire_layer_calls"][index] == 0:
            continue
        checked.append(index)
        tol = tolerance(spec.module)
        found = _layer_problems(spec, list(subs), index, sums, counts, tol)
        for text, about_updates in found:
            training_dropout = dropout if about_updates and spec.module.training else None
            problems.append(WiringProblem(index, text, training_dropout))
    return checked, problems


def _layer_problems(
    spec: LayerSpec, subs: list[int], index: int, sums: dict, counts: dict, tol: float
) -> list[tuple[str, bool]]:
    """(what did not hold, whether it involves the updates) for one layer."""
    s = spec.update_scale
    x, y = sums["wire_in"][index], sums["wire_out"][index]
    updates = sums["wire_update"][subs] * s  # [k, P]
    found: list[tuple[str, bool]] = []
    for i, (k, sub) in enumerate(zip(subs, spec.sublayers, strict=True)):
        name = f"{sub.kind} ({spec.name_of(sub.modules[0])})"
        if counts["norm_numel"][k] == 0:
            entry = spec.name_of(sub.entry)
            found.append((f"{name} never read a stream: {entry} did not run", False))
            continue
        if counts["update_numel"][k] == 0:
            found.append((f"{name} gave no update: {spec.name_of(sub.exit)} did not run", False))
            continue
        stream = sums["wire_stream"][k]
        sequential = x + updates[:i].sum(0)
        gap = min(_norm(stream - sequential), _norm(stream - x))
        scale = _norm(stream) + _norm(x) + sum(_norm(u) for u in updates[:i])
        if gap > tol * scale:
            found.append(
                (
                    f"the stream read for {name} at the input of {spec.name_of(sub.entry)} is "
                    "neither the layer's input nor its input plus the earlier updates "
                    f"(relative difference {gap / scale:.2g})",
                    i > 0,
                )
            )
        if sub.pre_norm is not None:
            normed, read = sums["wire_norm_out"][k], sums["wire_sub_in"][k]
            gap = _norm(normed - read)
            if gap > tol * (_norm(normed) + _norm(read)):
                found.append(
                    (
                        f"{name} does not read the output of {spec.name_of(sub.pre_norm)} "
                        f"(relative difference {gap / (_norm(normed) + _norm(read)):.2g})",
                        False,
                    )
                )
    if found or not spec.whole:
        return found
    gap = _norm(y - x - updates.sum(0))
    scale = _norm(y) + _norm(x) + sum(_norm(u) for u in updates)
    if gap > tol * scale:
        scaled = f" × {s:g}" if s != 1.0 else ""
        found.append(
            (
                f"its output is not its input plus the recorded updates{scaled} (relative "
                f"difference {gap / scale:.2g})",
                True,
            )
        )
    return found


def _norm(v: np.ndarray) -> float:
    return float(np.sqrt(np.sum(np.square(v, dtype=np.float64))))


def error_message(spec: LayerSpec, problem: WiringProblem, more: int) -> str:
    """One line: the layer, what did not match, and how to name its sublayers."""
    others = f" (and {more} more problems in other layers)" if more else ""
    return (
        f"layer {problem.layer} ({type(spec.module).__name__}) is not wired as discovered, "
        f"{spec.describe()}: {problem.message}{others}; the probe records nothing it cannot "
        f"match with the layer's own input and output: {LAYERS_HELP}"
    )


def warning_message(spec: LayerSpec, problem: WiringProblem) -> str:
    return (
        f"probe: layer {problem.layer} ({type(spec.module).__name__}): {problem.message} while "
        f"training with dropout ({problem.dropout}) between a sublayer and the residual add, so "
        "the wiring check cannot be exact; update_rms and grad_norm are read before that "
        "dropout (set it to 0 to see the check pass)"
    )


# Dropouts that act elsewhere than between a sublayer and the residual add.
_NOT_ON_THE_STREAM = ("attn", "attention", "embd", "embed", "classifier", "summary")


def training_dropout(config: object) -> str | None:
    """'ConfigName.attr=value' for a nonzero dropout of a model config that may act between a
    sublayer and the residual add (attention and embedding dropouts excluded), or None."""
    if config is None:
        return None
    values = getattr(config, "to_dict", lambda: vars(config))()
    for name, value in values.items():
        lowered = name.lower()
        if not ("dropout" in lowered or "pdrop" in lowered):
            continue
        if any(word in lowered for word in _NOT_ON_THE_STREAM):
            continue
        if isinstance(value, float) and value > 0 and math.isfinite(value):
            return f"{type(config).__name__}.{name}={value:g}"
    return None
