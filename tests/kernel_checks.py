"""What the kernel parity tests share: fresh seeds, relative errors, tolerances, gradients."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch

# Where tensors are made when a test names no device (conftest.py): the CPU, or the GPU.
DEVICE = torch.get_default_device()

# ‖Δ‖ / ‖reference‖ (Frobenius) allowed per input dtype.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
DTYPES = [torch.float32, torch.bfloat16]


def fresh_seed() -> int:
    """Seed torch from the OS (or ATTNRES_PROBE_TEST_SEED) and print it: pytest shows the
    line for a failing test, and the variable replays that exact run."""
    given = os.environ.get("ATTNRES_PROBE_TEST_SEED")
    seed = int(given) if given else int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    print(f"seed={seed}  (replay: ATTNRES_PROBE_TEST_SEED={seed})")
    return seed


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual − expected‖ / ‖expected‖ in float64; inf where actual has a NaN the other lacks."""
    a, e = actual.detach().double(), expected.detach().double()
    if a.shape != e.shape:
        raise AssertionError(f"shape {tuple(a.shape)} != expected {tuple(e.shape)}")
    if torch.isnan(a).any() and not torch.isnan(e).any():
        return float("inf")
    return ((a - e).norm() / e.norm().clamp_min(1e-30)).item()


# How many times the reference's own rounding a kernel may be off where that exceeds ``tol``.
ROUNDING_FACTOR = 4.0


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    """rel_err(actual, expected) < tol; for an ``expected`` from ``reference_outputs_and_grads``
    the bar is max(tol, ROUNDING_FACTOR × the reference's own error at the inputs' precision):
    a result that is a near-total cancellation is rounding-sized itself, and there no
    implementation at that precision meets a fixed relative bound."""
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    err = rel_err(actual, expected)
    bar = max(tol, ROUNDING_FACTOR * getattr(expected, "own_rounding", 0.0))
    assert err < bar, f"{what}: relative error {err:.3g} >= {bar:g}"


def leaves(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """Fresh leaf copies that require grad (None stays None)."""
    return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]


def outputs_and_grads(
    fn: Callable[..., Sequence[torch.Tensor]],
    inputs: Sequence[torch.Tensor | None],
    upstream: Sequence[torch.Tensor] | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor | None], list[torch.Tensor]]:
    """Run ``fn`` on leaf copies of ``inputs``; backpropagate ``upstream`` (random when None)
    into every output. Returns (outputs, input grads, the upstream grads used)."""
    xs = leaves(*inputs)
    outs = list(fn(*xs))
    if upstream is None:
        upstream = [torch.randn(o.shape).to(o.dtype) for o in outs]
    present = [x for x in xs if x is not None]
    grads = torch.autograd.grad(outs, present, list(upstream), allow_unused=True)
    by_input = iter(grads)
    return outs, [None if x is None else next(by_input) for x in xs], list(upstream)


def reference_outputs_and_grads(
    fn: Callable[..., Sequence[torch.Tensor]],
    inputs: Sequence[torch.Tensor | None],
    upstream: Sequence[torch.Tensor],
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """What a kernel's results are checked against: the reference ``fn`` evaluated in float64
    on the same (already rounded) inputs and upstream gradients, each result then rounded to
    the dtype the reference gives it at the inputs' own precision.

    Run at the inputs' precision, the reference carries rounding of its own that can exceed
    the tolerance while the kernel is right: a gradient that is a near-total cancellation
    (a depth query's, a single source's) in float32; in bfloat16, autograd summing a leaf's
    gradient contributions in bfloat16. Held to the float64 answer, the kernel must be right,
    within a few times the reference's own rounding where that exceeds the tolerance
    (:func:`assert_close`).
    """
    outs, grads, _ = outputs_and_grads(fn, inputs, upstream)  # the dtypes to round to
    wide = [None if x is None else x.double() for x in inputs]
    outs64, grads64, _ = outputs_and_grads(fn, wide, [u.double() for u in upstream])

    def like(exact: torch.Tensor | None, low: torch.Tensor | None) -> torch.Tensor | None:
        if exact is None:
            return None
        rounded = exact.to(low.dtype)
        # The relative error the reference makes at the inputs' precision (see assert_close).
        rounded.own_rounding = rel_err(low, rounded)
        return rounded

    return (
        [like(e, o) for e, o in zip(outs64, outs, strict=True)],
        [like(e, g) for e, g in zip(grads64, grads, strict=True)],
    )
