"""Fused (residual-add +) RMSNorm kernel against the reference, through the Triton interpreter."""

import pytest
import torch
from kernel_checks import (
    DTYPES,
    TOLERANCE,
    assert_close,
    fresh_seed,
    outputs_and_grads,
    reference_outputs_and_grads,
)

from attnres_probe.kernels import dispatch_triton, launch, reference
from attnres_probe.kernels.reference import NormStats

# One token; token counts that are not multiples of the tile (64 rows here); odd widths.
# (Width 1 is left out: x/rms(x) is then ±1 and its gradient pure cancellation.)
SHAPES = [(1, 8), (70, 33), (2, 35, 97), (13, 64)]


@pytest.fixture(autouse=True)
def _seed():
    fresh_seed()


def _stats() -> NormStats:
    return NormStats(sq=torch.zeros(1), grad_sq=torch.zeros(1))


def _plain_stats() -> NormStats:
    """The plain norm takes no gradient statistic (see ``kernels.rms_norm``)."""
    return NormStats(sq=torch.zeros(1))


@pytest.mark.parametrize("with_stats", [True, False], ids=["stats", "no-stats"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_matches_reference_forward_and_gradients(shape, dtype, with_stats):
    tol = TOLERANCE[dtype]
    x = (torch.randn(shape) * 3).to(dtype)
    weight = torch.randn(shape[-1])
    stats = _plain_stats() if with_stats else None
    with launch.poisoned_outputs():
        (y,), (dx, dw), upstream = outputs_and_grads(
            lambda x, w: (dispatch_triton.rms_norm(x, w, 1e-6, stats),), (x, weight)
        )
    (y_ref,), (dx_ref, dw_ref) = reference_outputs_and_grads(
        lambda x, w: (reference.rms_norm(x, w, 1e-6),), (x, weight), upstream
    )
    assert_close(y, y_ref, tol, "y")
    assert_close(dx, dx_ref, tol, "dx")
    assert_close(dw, dw_ref, tol, "dweight")
    if not with_stats:
        return
    # Statistics against torch, computed apart from either implementation.
    assert_close(stats.sq, x.double().pow(2).sum().float().reshape(1), 1e-5, "Σx²")


@pytest.mark.parametrize("with_stats", [True, False], ids=["stats", "no-stats"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_add_rms_norm_matches_reference_forward_and_gradients(shape, dtype, with_stats):
    tol = TOLERANCE[dtype]
    x = torch.randn(shape).to(dtype)
    update = (torch.randn(shape) * 2).to(dtype)
    weight = torch.randn(shape[-1])
    stats = _stats() if with_stats else None
    with launch.poisoned_outputs():
        (y, h), grads, upstream = outputs_and_grads(
            lambda x, u, w: dispatch_triton.add_rms_norm(x, u, w, 1e-6, stats), (x, update, weight)
        )
    (y_ref, h_ref), grads_ref = reference_outputs_and_grads(
        lambda x, u, w: reference.add_rms_norm(x, u, w, 1e-6), (x, update, weight), upstream
    )
    assert_close(y, y_ref, tol, "y")
    assert_close(h, h_ref, tol, "h")
    for name, g, g_ref in zip(("dx", "dupdate", "dweight"), grads, grads_ref, strict=True):
        assert_close(g, g_ref, tol, name)
    if not with_stats:
        return
    h64 = x.double() + update.double()
    assert_close(stats.sq, h64.pow(2).sum().float().reshape(1), tol, "Σh²")
    # ∂L/∂h is what reaches x (h = x + update): both of h's uses, the norm and h itself.
    assert_close(stats.grad_sq, grads_ref[0].double().pow(2).sum().float().reshape(1), tol, "Σdh²")


def test_add_rms_norm_keeps_the_promoted_stream_dtype_and_each_input_its_own_grad_dtype():
    x = torch.randn(4, 9, 48)  # float32 stream
    update = torch.randn(4, 9, 48).bfloat16()  # a bfloat16 sublayer output (autocast)
    weight = torch.randn(48)
    (y, h), (dx, du, dw), upstream = outputs_and_grads(
        lambda x, u, w: dispatch_triton.add_rms_norm(x, u, w), (x, update, weight)
    )
    (y_ref, h_ref), (dx_ref, du_ref, dw_ref) = reference_outputs_and_grads(
        lambda x, u, w: reference.add_rms_norm(x, u, w), (x, update, weight), upstream
    )
    assert (y.dtype, h.dtype, dx.dtype, du.dtype) == (
        y_ref.dtype,
        h_ref.dtype,
        x.dtype,
        du_ref.dtype,
    )
    assert du.dtype == torch.bfloat16
    assert_close(y, y_ref, 1e-5, "y")
    assert_close(dx, dx_ref, 1e-5, "dx")
    assert_close(du, du_ref, 1e-2, "dupdate")
    assert_close(dw, dw_ref, 1e-5, "dweight")


def test_statistics_add_to_what_the_slots_already_hold():
    x, update = torch.randn(5, 40), torch.randn(5, 40)
    stats = NormStats(sq=torch.full((1,), 7.0), grad_sq=torch.full((1,), 3.0))
    xs = x.clone().requires_grad_()
    y, h = dispatch_triton.add_rms_norm(xs, update, torch.ones(40), 1e-6, stats)
    y.sum().backward()
    torch.testing.assert_close(stats.sq, 7.0 + (x + update).pow(2).sum().reshape(1))
    torch.testing.assert_close(stats.grad_sq, 3.0 + xs.grad.pow(2).sum().reshape(1))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, on NaN
def test_nan_and_inf_rows_come_out_nan_where_the_reference_has_nan_and_nothing_crashes():
    x = torch.randn(6, 33)
    x[1, 4] = float("nan")
    x[4, 0] = float("inf")
    weight = torch.randn(33)
    xs = x.clone().requires_grad_()
    y = dispatch_triton.rms_norm(xs, weight, 1e-6, _plain_stats())
    y.sum().backward()
    y_ref = reference.rms_norm(x, weight)
    assert torch.equal(torch.isnan(y), torch.isnan(y_ref))
    assert torch.isnan(y[1]).all() and torch.isnan(y[4]).any()
    clean = [0, 2, 3, 5]
    torch.testing.assert_close(y[clean], y_ref[clean])
    assert torch.isfinite(xs.grad[clean]).all()


@pytest.mark.parametrize("add", [False, True])
def test_reference_gradients_pass_gradcheck_in_float64(add):
    x = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    u = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, dtype=torch.float64, requires_grad=True)
    if add:
        assert torch.autograd.gradcheck(lambda x, u, w: reference.add_rms_norm(x, u, w), (x, u, w))
    else:
        assert torch.autograd.gradcheck(lambda x, w: reference.rms_norm(x, w), (x, w))


@pytest.mark.parametrize("shape", SHAPES)
def test_the_reference_add_norm_backward_is_autograd_of_its_formula_in_float64(shape):
    """The reference forms ∂L/∂h and Σ(∂L/∂h)² in its own backward: checked against autograd of
    the formula written out, in float64, with both outputs used (as the residual stream uses h)."""
    x, update = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    weight = torch.randn(shape[-1], dtype=torch.float64)
    up_y, up_h = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)

    def formula(x, u, w):
        h = x + u
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * w, h

    leaves = [t.clone().requires_grad_() for t in (x, update, weight)]
    y, h = formula(*leaves)
    torch.autograd.backward((y, h), (up_y, up_h))
    want = [t.grad for t in leaves]

    leaves = [t.clone().requires_grad_() for t in (x, update, weight)]
    stats = NormStats(
        sq=torch.zeros(1, dtype=torch.float64), sink=torch.zeros((), requires_grad=True)
    )
    y_ref, h_ref = reference.add_rms_norm(*leaves, 1e-6, stats)
    torch.autograd.backward((y_ref, h_ref), (up_y, up_h))
    torch.testing.assert_close(y_ref, formula(x, update, weight)[0], rtol=1e-12, atol=1e-12)
    for name, got, expected in zip(
        ("dx", "dupdate", "dweight"), [t.grad for t in leaves], want, strict=True
    ):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12, msg=name)
    torch.testing.assert_close(stats.sink.grad.double(), want[0].pow(2).sum(), rtol=1e-6, atol=0)
    torch.testing.assert_close(stats.sq, (x + update).pow(2).sum().reshape(1), rtol=1e-12, atol=0)
    # Only one output used: the other's gradient is absent, not a zero tensor made up.
    leaves = [t.clone().requires_grad_() for t in (x, update, weight)]
    reference.add_rms_norm(*leaves, 1e-6)[1].mul(up_h).sum().backward()
    torch.testing.assert_close(leaves[0].grad, up_h)
    assert leaves[2].grad is None


def test_no_gradient_statistic_where_no_gradient_can_reach_the_stream():
    stats = NormStats(sq=torch.zeros(1), sink=torch.zeros((), requires_grad=True))
    weight = torch.randn(8, requires_grad=True)
    y, _ = reference.add_rms_norm(torch.randn(3, 8), torch.randn(3, 8), weight, 1e-6, stats)
    y.sum().backward()  # only the weight learns: x and update are frozen
    assert weight.grad is not None and stats.sink.grad is None


@pytest.mark.parametrize("shape", SHAPES)
def test_the_reference_norm_backward_is_autograd_of_its_formula_in_float64(shape):
    x, weight = torch.randn(shape, dtype=torch.float64), torch.randn(shape[-1], dtype=torch.float64)
    upstream = torch.randn(shape, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (x, weight)]
    y = leaves[0] * torch.rsqrt(leaves[0].pow(2).mean(-1, keepdim=True) + 1e-6) * leaves[1]
    y.backward(upstream)
    want = [t.grad for t in leaves]
    leaves = [t.clone().requires_grad_() for t in (x, weight)]
    stats = NormStats(sq=torch.zeros(1, dtype=torch.float64))
    y_ref = reference.rms_norm(*leaves, 1e-6, stats)
    y_ref.backward(upstream)
    torch.testing.assert_close(y_ref, y.detach(), rtol=1e-12, atol=1e-12)
    for name, got, expected in zip(("dx", "dweight"), [t.grad for t in leaves], want, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12, msg=name)
    torch.testing.assert_close(stats.sq, x.pow(2).sum().reshape(1), rtol=1e-12, atol=0)


def test_the_reference_norms_have_right_second_derivatives():
    """Gradient penalties and Hessian-vector products differentiate the backward itself: the
    written-out backwards must then be differentiable too (numerically checked, float64)."""
    x, update = torch.randn(3, 7, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    weight = torch.randn(7, dtype=torch.float64)
    inputs = [t.clone().requires_grad_() for t in (x, update, weight)]
    assert torch.autograd.gradgradcheck(lambda x, w: reference.rms_norm(x, w), inputs[::2])
    assert torch.autograd.gradgradcheck(lambda x, u, w: reference.add_rms_norm(x, u, w), inputs)


def test_a_kernel_refuses_a_second_derivative_instead_of_giving_a_wrong_one():
    x, weight = torch.randn(4, 16, requires_grad=True), torch.randn(16)
    y = dispatch_triton.rms_norm(x, weight)
    (grad,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grad.sum().backward()
