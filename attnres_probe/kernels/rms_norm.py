"""Fused (residual-add +) RMSNorm: Triton kernels, launchers (custom ops), autograd Functions.

Replaces ``reference.rms_norm`` / ``reference.add_rms_norm``:

    h = x + update                       (add variant only; stored in the promoted dtype)
    y = h / sqrt(mean(h²) + eps) * weight

Statistics (``reference.NormStats``) are by-products: the forward kernel already forms Σh² per
row for the RMS, the backward kernel already holds ∂L/∂h; each program adds its partial sums into
the float32 slots with one atomic add. Without slots the kernels are compiled without that code.

Backward statistic Σ(∂L/∂h)² (add variant only) counts the whole gradient of the stream, from
all its consumers: the backward kernel holds exactly that (the gradient of the returned h
arrives with ∂L/∂y), so it reduces it in the same pass. The plain variant has none: its backward
sees only the part of x's gradient that flows through the norm.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from attnres_probe.kernels import launch
from attnres_probe.kernels.launch import cast_to


@triton.jit
def _rms_norm_fwd_kernel(
    x_ptr,
    u_ptr,
    w_ptr,
    y_ptr,
    h_ptr,
    rstd_ptr,
    sq_ptr,
    M,
    D,
    eps,
    HAS_UPDATE: tl.constexpr,
    HAS_STATS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    n_progs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < D
    w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    sq_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    for tile in range(pid, tl.cdiv(M, BLOCK_M), n_progs):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = rows < M
        mask = row_mask[:, None] & col_mask[None, :]
        offs = rows.to(tl.int64)[:, None] * D + cols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        if HAS_UPDATE:
            u = tl.load(u_ptr + offs, mask=mask, other=0.0)
            # Round h to its storage dtype before normalising, as `x + update` would.
            h = cast_to((x.to(tl.float32) + u.to(tl.float32)), h_ptr.dtype.element_ty)
            tl.store(h_ptr + offs, h, mask=mask)
            hf = h.to(tl.float32)
        else:
            hf = x.to(tl.float32)
        ss = tl.sum(hf * hf, axis=1)  # [BLOCK_M]
        rstd = 1.0 / tl.sqrt(ss / D + eps)
        y = hf * rstd[:, None] * w[None, :]
        tl.store(y_ptr + offs, cast_to(y, y_ptr.dtype.element_ty), mask=mask)
        tl.store(rstd_ptr + rows, rstd, mask=row_mask)
        if HAS_STATS:
            sq_acc += ss  # masked rows contribute 0
    if HAS_STATS:
        tl.atomic_add(sq_ptr, tl.sum(sq_acc, axis=0))


@triton.jit
def _rms_norm_bwd_kernel(
    dy_ptr,
    dh_ptr,
    h_ptr,
    rstd_ptr,
    w_ptr,
    dx_ptr,
    du_ptr,
    dw_part_ptr,
    grad_sq_ptr,
    M,
    D,
    HAS_DH: tl.constexpr,
    HAS_DU: tl.constexpr,
    HAS_STATS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    n_progs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < D
    w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    gsq_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    for tile in range(pid, tl.cdiv(M, BLOCK_M), n_progs):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = rows < M
        mask = row_mask[:, None] & col_mask[None, :]
        offs = rows.to(tl.int64)[:, None] * D + cols[None, :]
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        hf = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=row_mask, other=0.0)
        normed = hf * rstd[:, None]
        g = dy * w[None, :]
        # d/dh [h·r(h)]ᵀg = r·(g − n·mean(g·n)), n = h·r
        c = tl.sum(g * normed, axis=1) / D
        dh = (g - normed * c[:, None]) * rstd[:, None]
        if HAS_DH:
            dh += tl.load(dh_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_ptr + offs, cast_to(dh, dx_ptr.dtype.element_ty), mask=mask)
        if HAS_DU:
            tl.store(du_ptr + offs, cast_to(dh, du_ptr.dtype.element_ty), mask=mask)
        dw_acc += tl.sum(dy * normed, axis=0)
        if HAS_STATS:
            gsq_acc += tl.sum(dh * dh, axis=1)
    tl.store(dw_part_ptr + pid.to(tl.int64) * D + cols, dw_acc, mask=col_mask)
    if HAS_STATS:
        tl.atomic_add(grad_sq_ptr, tl.sum(gsq_acc, axis=0))


def _tiles(m: int, d: int, device: torch.device) -> tuple[int, int, int, int]:
    bd = launch.block_d(d)
    bm = launch.block_m(bd)
    return bd, bm, launch.n_programs(triton.cdiv(m, bm), device), launch.num_warps(bm * bd)


def rms_norm_forward(
    x: torch.Tensor,
    update: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    sq: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x, update [M, D] contiguous, weight [D] -> (y [M, D], h [M, D], rstd [M] float32).

    h is ``x`` itself when there is no update. ``sq`` [1] float32 receives Σh² when given.
    """
    launch.check_launchable(x, update, weight)
    m, d = x.shape
    h_dtype = x.dtype if update is None else torch.result_type(x, update)
    h = x if update is None else launch.empty((m, d), h_dtype, x.device)
    y = launch.empty((m, d), h_dtype, x.device)
    rstd = launch.empty(m, torch.float32, x.device)
    bd, bm, g, warps = _tiles(m, d, x.device)
    _rms_norm_fwd_kernel[(g,)](
        x,
        update if update is not None else x,
        weight,
        y,
        h,
        rstd,
        sq if sq is not None else rstd,
        m,
        d,
        eps,
        HAS_UPDATE=update is not None,
        HAS_STATS=sq is not None,
        BLOCK_M=bm,
        BLOCK_D=bd,
        num_warps=warps,
    )
    return y, h, rstd


def rms_norm_backward(
    dy: torch.Tensor,
    dh: torch.Tensor | None,
    h: torch.Tensor,
    rstd: torch.Tensor,
    weight: torch.Tensor,
    dx_dtype: torch.dtype,
    du_dtype: torch.dtype | None = None,
    grad_sq: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Gradients of rms_norm_forward: dy [M, D] (∂L/∂y), dh [M, D] or None (∂L/∂h from h's
    other uses) -> (dx [M, D], du [M, D] or None, dweight [D] in weight's dtype).

    du (the update's gradient) equals dx; it gets its own buffer only when its dtype differs,
    otherwise dx is returned for both. ``grad_sq`` [1] float32 receives Σ(∂L/∂h)² when given.
    """
    m, d = dy.shape
    bd, bm, g, warps = _tiles(m, d, dy.device)
    dx = launch.empty((m, d), dx_dtype, dy.device)
    separate_du = du_dtype is not None and du_dtype != dx_dtype
    du = launch.empty((m, d), du_dtype, dy.device) if separate_du else None
    dw_part = launch.empty((g, d), torch.float32, dy.device)
    _rms_norm_bwd_kernel[(g,)](
        dy,
        dh if dh is not None else dy,
        h,
        rstd,
        weight,
        dx,
        du if du is not None else dx,
        dw_part,
        grad_sq if grad_sq is not None else rstd,
        m,
        d,
        HAS_DH=dh is not None,
        HAS_DU=separate_du,
        HAS_STATS=grad_sq is not None,
        BLOCK_M=bm,
        BLOCK_D=bd,
        num_warps=warps,
    )
    if du_dtype is not None and not separate_du:
        du = dx
    return dx, du, dw_part.sum(0).to(weight.dtype)


# The launchers as custom ops (see ``launch.custom_op``): what the autograd Functions call.


@launch.custom_op("rms_norm_fwd", mutates_args=("sq",))
def rms_norm_fwd(
    x: torch.Tensor, weight: torch.Tensor, eps: float, sq: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, D] contiguous, weight [D] -> (y [M, D], rstd [M] float32); sq [1] += Σx²."""
    y, _, rstd = rms_norm_forward(x, None, weight, eps, sq)
    return y, rstd


@rms_norm_fwd.register_fake
def _(x, weight, eps, sq):
    return x.new_empty(x.shape), x.new_empty(x.shape[0], dtype=torch.float32)


@launch.custom_op("add_rms_norm_fwd", mutates_args=("sq",))
def add_rms_norm_fwd(
    x: torch.Tensor, update: torch.Tensor, weight: torch.Tensor, eps: float, sq: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x, update [M, D] contiguous -> (y [M, D], h [M, D], rstd [M] float32); sq [1] += Σh²."""
    return rms_norm_forward(x, update, weight, eps, sq)


@add_rms_norm_fwd.register_fake
def _(x, update, weight, eps, sq):
    h_dtype = torch.result_type(x, update)
    m = x.shape[0]
    return (
        x.new_empty(x.shape, dtype=h_dtype),
        x.new_empty(x.shape, dtype=h_dtype),
        x.new_empty(m, dtype=torch.float32),
    )


@launch.custom_op("rms_norm_bwd", mutates_args=("grad_sq",))
def rms_norm_bwd(
    dy: torch.Tensor,
    dh: torch.Tensor | None,
    h: torch.Tensor,
    rstd: torch.Tensor,
    weight: torch.Tensor,
    dx_dtype: torch.dtype,
    grad_sq: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rms_norm_backward` -> (dx, dweight); grad_sq [1] += Σ(∂L/∂h)²."""
    dx, _, dw = rms_norm_backward(dy, dh, h, rstd, weight, dx_dtype, None, grad_sq)
    return dx, dw


@rms_norm_bwd.register_fake
def _(dy, dh, h, rstd, weight, dx_dtype, grad_sq):
    return dy.new_empty(dy.shape, dtype=dx_dtype), weight.new_empty(weight.shape)


@launch.custom_op("rms_norm_bwd_split", mutates_args=("grad_sq",))
def rms_norm_bwd_split(
    dy: torch.Tensor,
    dh: torch.Tensor | None,
    h: torch.Tensor,
    rstd: torch.Tensor,
    weight: torch.Tensor,
    dx_dtype: torch.dtype,
    du_dtype: torch.dtype,
    grad_sq: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`rms_norm_backward` where x and the update differ in dtype -> (dx, du, dweight).
    (A mutable op returns a fixed tuple, so the case with du gets its own op.)"""
    return rms_norm_backward(dy, dh, h, rstd, weight, dx_dtype, du_dtype, grad_sq)


@rms_norm_bwd_split.register_fake
def _(dy, dh, h, rstd, weight, dx_dtype, du_dtype, grad_sq):
    return (
        dy.new_empty(dy.shape, dtype=dx_dtype),
        dy.new_empty(dy.shape, dtype=du_dtype),
        weight.new_empty(weight.shape),
    )


class RMSNormFunction(torch.autograd.Function):
    """y = rms_norm(x) · weight; ``sq`` [1] float32 or None receives Σx²."""

    @staticmethod
    def forward(ctx, x, weight, eps, sq):
        x2 = launch.rows(x)
        y, rstd = rms_norm_fwd(x2, weight, eps, sq)
        ctx.save_for_backward(x2, rstd, weight)
        ctx.x_dtype = x.dtype
        return y.view(x.shape)

    @staticmethod
    @once_differentiable  # a kernel launch: a second derivative would be wrong, so none
    def backward(ctx, dy):
        x2, rstd, weight = ctx.saved_tensors
        dx, dw = rms_norm_bwd(launch.rows(dy), None, x2, rstd, weight, ctx.x_dtype, None)
        return dx.view(dy.shape), dw, None, None


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, sq: torch.Tensor | None = None
) -> torch.Tensor:
    """x [*, D], weight [D] -> rms_norm(x) · weight; sq [1] float32 += Σx² when given."""
    return RMSNormFunction.apply(x, weight, eps, sq)


class AddRMSNormFunction(torch.autograd.Function):
    """h = x + update; returns (rms_norm(h) · weight, h) with optional statistics slots.

    ``grad_sq`` is added into by the backward op: a forward input mutated during the backward,
    which AOTAutograd supports (it does not require grad and keeps its shape).
    """

    @staticmethod
    def forward(ctx, x, update, weight, eps, sq, grad_sq):
        shape = x.shape
        if update.shape != shape:
            raise ValueError(
                f"add_rms_norm needs x and update of one shape, got {tuple(x.shape)} and "
                f"{tuple(update.shape)}; expand them before the call"
            )
        y, h, rstd = add_rms_norm_fwd(launch.rows(x), launch.rows(update), weight, eps, sq)
        ctx.save_for_backward(h, rstd, weight)
        ctx.set_materialize_grads(False)
        ctx.grad_sq = grad_sq
        ctx.dtypes = (x.dtype, update.dtype)
        ctx.shape = shape
        return y.view(shape), h.view(shape)

    @staticmethod
    @once_differentiable  # a kernel launch: a second derivative would be wrong, so none
    def backward(ctx, dy, dh):
        h, rstd, weight = ctx.saved_tensors  # h [M, D]
        dy = torch.zeros_like(h) if dy is None else launch.rows(dy)
        dh = None if dh is None else launch.rows(dh)
        x_dtype, update_dtype = ctx.dtypes
        if x_dtype == update_dtype:
            dx, dw = rms_norm_bwd(dy, dh, h, rstd, weight, x_dtype, ctx.grad_sq)
            du = dx
        else:
            dx, du, dw = rms_norm_bwd_split(
                dy, dh, h, rstd, weight, x_dtype, update_dtype, ctx.grad_sq
            )
        return dx.view(ctx.shape), du.view(ctx.shape), dw, None, None, None
