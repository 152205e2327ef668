"""Launch helpers shared by the Triton kernels: tile sizes, program counts, input checks, and
each launcher's ``torch.library`` custom op (:class:`KernelOp`).

Every kernel here processes a ``[BLOCK_M, BLOCK_D]`` tile of tokens with the whole model width
in registers, and runs as a persistent grid: ``G`` programs stride over the token tiles, keep
their by-product reductions (statistics, parameter gradients) in registers and publish them once
at the end (one atomic add or one row of a partials buffer per program, never one per tile).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterable, Iterator

import torch
import triton
import triton.language as tl
from torch.utils._python_dispatch import _get_current_dispatch_mode

MAX_D = 16384  # widest row a program keeps in registers
_PROGRAMS_PER_SM = 4
_INTERPRETER_PROGRAMS = 2  # >1 so tests exercise the cross-program reductions


class KernelOp:
    """A launcher and the custom op ``attnres_probe::<name>`` made of it.

    ``torch.compile`` sees the op: one opaque node with the shapes of its ``register_fake`` (no
    graph break, no tracing into the launcher), whose ``mutates_args`` name the statistics
    slots it adds into. Eager calls run the launcher itself: the op's dispatch costs several
    times a kernel launch on the host, and the op's real implementation is the launcher anyway
    (so under a dispatch mode, e.g. a fake-tensor trace or a FLOP counter, the op runs).
    Outputs are fresh tensors, never an input or another output.
    """

    def __init__(self, name: str, launcher: Callable, mutates_args: Iterable[str]):
        self.launcher = launcher
        self.op = torch.library.custom_op(
            f"attnres_probe::{name}", launcher, mutates_args=tuple(mutates_args)
        )
        functools.update_wrapper(self, launcher)

    def __call__(self, *args):
        if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None:
            return self.op(*args)  # traced (compile, export, make_fx, fake tensors)
        return self.launcher(*args)

    def register_fake(self, fake: Callable) -> Callable:
        """``fake`` (the launcher's signature) gives the outputs' shapes, dtypes and strides."""
        self.op.register_fake(fake)
        return fake


def custom_op(name: str, mutates_args: Iterable[str] = ()) -> Callable[[Callable], KernelOp]:
    """Decorator: the launcher as a :class:`KernelOp` named ``name``."""
    return lambda launcher: KernelOp(name, launcher, mutates_args)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_launchable(*tensors: torch.Tensor | None) -> None:
    """Raise a readable error where Triton cannot run on these tensors."""
    for t in tensors:
        if t is None:
            continue
        if t.device.type != "cuda" and not interpreting():
            raise RuntimeError(
                f"the Triton kernels got a {t.device.type} tensor; they run on CUDA, or on the CPU "
                "only with TRITON_INTERPRET=1 set before triton is imported "
                "(or use ATTNRES_PROBE_KERNELS=reference)"
            )


def block_d(d: int) -> int:
    """The power-of-two tile width covering a row of ``d`` elements."""
    if d > MAX_D:
        raise ValueError(
            f"model width D={d} exceeds the fused kernels' limit of {MAX_D}; "
            "use ATTNRES_PROBE_KERNELS=reference for wider rows"
        )
    return triton.next_power_of_2(max(d, 1))


def block_m(per_token: int, budget: int | None = None) -> int:
    """Tokens per tile so that a tile holds about ``budget`` float32 values.

    per_token: values one token occupies in the tile (e.g. BLOCK_D, or S·BLOCK_D).
    """
    if budget is None:
        budget = 8192 if interpreting() else 4096
    return max(1, min(64, triton.next_power_of_2(max(1, budget // per_token))))


def num_warps(tile_values: int) -> int:
    """Warps for a tile of ``tile_values`` float32 values: about 8 values per thread, which
    keeps every kernel here under ~100 registers with no spills on sm_90 at D=2048."""
    return max(4, min(32, triton.next_power_of_2(max(1, tile_values // 256))))


@functools.lru_cache(maxsize=8)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def n_programs(n_tiles: int, device: torch.device) -> int:
    """Programs of a persistent grid over ``n_tiles`` tiles (at least one)."""
    if device.type == "cuda":
        cap = _sm_count(device.index if device.index is not None else 0) * _PROGRAMS_PER_SM
    else:
        cap = _INTERPRETER_PROGRAMS
    return max(1, min(n_tiles, cap))


_poison_outputs = False


def empty(shape: tuple[int, ...] | int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised buffer for a kernel to fill (NaN-filled inside :func:`poisoned_outputs`)."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if _poison_outputs and out.is_floating_point():
        out.fill_(float("nan"))
    return out


@contextlib.contextmanager
def poisoned_outputs() -> Iterator[None]:
    """Fill every buffer the launchers allocate with NaN, so an element a kernel fails to
    write shows up in a comparison (a test aid; costs one fill per buffer)."""
    global _poison_outputs
    previous, _poison_outputs = _poison_outputs, True
    try:
        yield
    finally:
        _poison_outputs = previous


def rows(x: torch.Tensor) -> torch.Tensor:
    """x [*, D] as a contiguous [M, D] matrix (a view when x is already contiguous)."""
    return x.reshape(-1, x.shape[-1]).contiguous()


@triton.jit
def _bf16_round_nearest_even(x):
    """float32 x rounded to the nearest bfloat16 (ties to even), still as float32 bits."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return tl.where(x != x, x, bits.to(tl.float32, bitcast=True))


if interpreting():
    # The interpreter truncates float32 -> bfloat16 where the GPU (and torch) round to nearest
    # even; round first so that interpreted results match both.
    @triton.jit
    def cast_to(x, dtype: tl.constexpr):
        """x converted for storing as ``dtype``, rounding to nearest-even like torch does."""
        if dtype == tl.bfloat16:
            return _bf16_round_nearest_even(x.to(tl.float32)).to(dtype)
        else:
            return x.to(dtype)

else:

    @triton.jit
    def cast_to(x, dtype: tl.constexpr):
        """x converted for storing as ``dtype``, rounding to nearest-even like torch does."""
        return x.to(dtype)
