"""The Triton kernels are opaque custom ops to ``torch.compile``: models on the Triton path
compile whole, with and without a recording, and compute what they compute eagerly."""

import copy

import pytest
import torch
import torch._dynamo as dynamo
from kernel_checks import DEVICE
from torch._dynamo.utils import counters

from attnres_probe.hooks.taps import native_recording
from attnres_probe.kernels import attnres, block_attnres, rms_norm
from attnres_probe.models.config import ModelConfig
from attnres_probe.models.model import build_model

KINDS = ["baseline", "full", "block"]

# The kernel ops each kind's compiled forward and backward graphs must hold (as opaque nodes).
KERNEL_OPS = {
    "baseline": {"rms_norm_fwd", "add_rms_norm_fwd", "rms_norm_bwd"},
    "full": {"rms_norm_fwd", "attnres_fwd", "attnres_bwd", "rms_norm_bwd"},
    "block": {
        "rms_norm_fwd",
        "attnres_fwd",
        "block_phase1_fwd",
        "block_phase1_bwd",
        "block_phase2_fwd",
        "block_phase2_bwd",
        "block_weights_fwd",
    },
}


@pytest.fixture(autouse=True)
def _triton_path(monkeypatch):
    monkeypatch.setenv("ATTNRES_PROBE_KERNELS", "triton")
    dynamo.reset()
    counters.clear()
    yield
    dynamo.reset()


def _model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    # Two layers in two blocks: Block AttnRes runs phase 2 both without and with a partial sum.
    cfg = ModelConfig(residual=kind, n_layers=2, d_model=16, n_heads=2, n_blocks=2, max_seq_len=8)
    model = build_model(cfg)
    with torch.no_grad():  # off the init: non-uniform depth weights, non-trivial updates
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


class _OpsSeen:
    """A backend that notes the custom ops in every graph it compiles (forward and backward,
    nested subgraphs included), then compiles it with the backend ``name``."""

    def __init__(self, name: str):
        self.ops: set[str] = set()
        self.backend = dynamo.lookup_backend(name)

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        for module in gm.modules():
            for node in getattr(module, "graph", torch.fx.Graph()).nodes:
                target = getattr(node.target, "name", lambda: "")()
                if isinstance(target, str) and target.startswith("attnres_probe::"):
                    self.ops.add(target.split("::")[1].split(".")[0])
        return self.backend(gm, example_inputs)


def _step(model, run, idx, recording):
    """Forward + backward of one step -> (logits, {parameter: grad})."""
    model.recording = recording
    model.zero_grad(set_to_none=True)
    try:
        logits = run(idx)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx.flatten()).backward()
    finally:
        model.recording = None
    if recording is not None:
        recording.settle()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_equal(got, want, what):
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=what)


@pytest.mark.parametrize(
    "kind,backend_name",
    [(kind, "aot_eager") for kind in KINDS]
    # inductor generates and builds C++ around the ops: about a minute each on 2 cores
    + [pytest.param(kind, "inductor", marks=pytest.mark.slow) for kind in KINDS],
)
def test_a_model_on_the_kernels_compiles_whole_and_equals_its_eager_run(kind, backend_name):
    """Recorded, unrecorded and recorded again: one graph each for recorded and unrecorded
    steps, no graph break, and logits, gradients, sums and counts as eager computes them."""
    model = _model(kind)
    eager = copy.deepcopy(model)
    backend = _OpsSeen(backend_name)
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    rec, eager_rec = native_recording(model), native_recording(eager)
    g = torch.Generator().manual_seed(1)
    for step, recorded in enumerate((True, False, True)):
        idx = torch.randint(0, 256, (2, 7), generator=g, device="cpu").to(DEVICE)
        rec.reset()
        eager_rec.reset()
        got = _step(model, compiled, idx, rec if recorded else None)
        want = _step(eager, eager, idx, eager_rec if recorded else None)
        _assert_equal(got[0], want[0], f"step {step}: logits")
        for name, grad in want[1].items():
            _assert_equal(got[1][name], grad, f"step {step}: grad of {name}")
        if recorded:
            for name, value in eager_rec.views.items():
                _assert_equal(rec.views[name], value, f"step {step}: {name}")
            assert torch.equal(rec.counts, eager_rec.counts)
            assert rec.backward_seen and eager_rec.views["norm_sq"].gt(0).all()
            if kind == "baseline":  # added by the norm kernels' backward, into a forward input
                assert eager_rec.views["norm_grad_sq"][1:].gt(0).all()
    assert not counters["graph_break"]
    assert counters["stats"]["unique_graphs"] == 2  # no recompile after the first of each
    assert backend.ops >= KERNEL_OPS[kind], f"missing {KERNEL_OPS[kind] - backend.ops}"


def _op_cases() -> dict[str, tuple]:
    """name -> (op, args): every kernel op, on odd sizes, with its optional inputs and slots."""
    m, d, n, s = 5, 12, 3, 2
    f32, bf16 = torch.float32, torch.bfloat16

    def slot(k: int = 1) -> torch.Tensor:
        return torch.zeros(k)

    x, h = torch.randn(m, d), torch.randn(m, d)
    weight, rstd = torch.randn(d), torch.rand(m) + 0.5
    sources, query = torch.randn(n, m, d), torch.randn(d)
    weights = torch.softmax(torch.randn(n, m), 0)
    blocks, queries = torch.randn(n, m, d), torch.randn(s, d)
    logits, lse = torch.randn(s, n, m), torch.randn(s, m)
    o1, lse1, partial, zb = (
        torch.randn(m, d),
        torch.randn(m) + 2,
        torch.randn(m, d),
        torch.randn(n, m),
    )
    return {
        "rms_norm_fwd": (rms_norm.rms_norm_fwd, (x.to(bf16), weight, 1e-6, slot())),
        "rms_norm_fwd, no slot": (rms_norm.rms_norm_fwd, (x, weight, 1e-6, None)),
        "add_rms_norm_fwd, mixed dtypes": (
            rms_norm.add_rms_norm_fwd,
            (x, h.to(bf16), weight, 1e-6, slot()),
        ),
        "rms_norm_bwd": (rms_norm.rms_norm_bwd, (x, h, h, rstd, weight, f32, slot())),
        "rms_norm_bwd, no dh": (rms_norm.rms_norm_bwd, (x, None, h, rstd, weight, bf16, None)),
        "rms_norm_bwd_split": (
            rms_norm.rms_norm_bwd_split,
            (x, h, h, rstd, weight, f32, bf16, slot()),
        ),
        "attnres_fwd": (attnres.attnres_fwd, (sources, query, 1e-6, slot(n), slot())),
        "attnres_fwd, bf16": (attnres.attnres_fwd, (sources.to(bf16), query, 1e-6, None, None)),
        "attnres_bwd": (attnres.attnres_bwd, (sources, query, weights, x, weights, 1e-6)),
        "block_phase1_fwd": (block_attnres.phase1_fwd, (blocks.to(bf16), queries, 1e-6)),
        "block_phase1_bwd": (
            block_attnres.phase1_bwd,
            (blocks, queries, logits, lse, torch.randn(s, m, d), lse, logits, 1e-6),
        ),
        "block_phase1_bwd, dout only": (
            block_attnres.phase1_bwd,
            (blocks, queries, logits, lse, torch.randn(s, m, d), None, None, 1e-6),
        ),
        "block_phase2_fwd": (
            block_attnres.phase2_fwd,
            (o1, lse1, partial, query, zb, 1e-6, slot(n), slot(), slot()),
        ),
        "block_weights_fwd": (
            block_attnres.block_weights_fwd,
            (o1, lse1, zb, 1e-6, slot(n), slot()),
        ),
        "block_phase2_bwd": (
            block_attnres.phase2_bwd,
            (o1, lse1, partial, query, zb, x, torch.randn(n + 1, m), 1e-6),
        ),
        "block_phase2_bwd, weights only": (
            block_attnres.phase2_bwd,
            (o1, lse1, partial, query, zb, None, torch.randn(n + 1, m), 1e-6),
        ),
    }


@pytest.mark.parametrize("case", list(_op_cases()))
def test_each_kernel_op_declares_its_shapes_dtypes_and_mutations_truly(case):
    """torch.library.opcheck: the fake gives the real outputs' shapes, dtypes and strides;
    the op mutates exactly the slots it declares and returns no alias of an input."""
    op, args = _op_cases()[case]
    torch.library.opcheck(op.op, args)
