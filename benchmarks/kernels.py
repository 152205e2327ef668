"""Benchmark the fused kernels against eager PyTorch, torch.compile and flash-attn-res.

    python benchmarks/kernels.py [--out benchmarks/results] [--quick] [--no-sweep] [--no-step]

Needs a CUDA GPU; without one it says so and exits with status 2 (``--dry-run`` instead runs
every measurement once at toy sizes through the Triton interpreter, to check this script).

For each op and pass (forward, backward, forward+backward) it times, with statistics on and off:
our Triton kernels ("triton"), the pure-torch reference ("eager"), ``torch.compile`` of the
reference ("compile"), and the ``flash-attn-res`` package ("flash-attn-res", Block AttnRes only,
no statistics) when it is importable — it is never a dependency of this project. Achieved
bandwidth is the fewest bytes the op must move (inputs read once, outputs written once) over
the time, shown as a fraction of the measured device-to-device copy bandwidth. Last, a whole
training step of a 32-layer Block AttnRes model against the baseline model of the same size.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

PASSES = ("fwd", "bwd", "fwd+bwd")


@dataclass
class Shape:
    """tokens = B·T; n = sources (Full AttnRes) or completed blocks (phase 1); S = sublayers
    per block; D = model width."""

    tokens: int = 16384
    d: int = 2048
    n: int = 8
    s: int = 8
    batch: int = 8  # tokens = batch · seq

    def label(self) -> str:
        return f"BT={self.tokens} D={self.d} N={self.n} S={self.s}"


@dataclass
class Row:
    op: str
    pass_: str
    impl: str
    stats: bool
    shape: str
    ms: float | None = None
    min_bytes: int = 0
    gbps: float | None = None
    copy_fraction: float | None = None
    speedup_vs_eager: float | None = None
    speedup_vs_flash_attn_res: float | None = None
    note: str = ""


@dataclass
class Report:
    header: dict
    rows: list[Row] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)


# ----------------------------------------------------------------------------- timing


class Timer:
    """Median milliseconds of a callable: triton.testing.do_bench on CUDA (L2 flushed between
    calls); one plain call elsewhere (dry runs, where only the code path matters)."""

    def __init__(self, device: torch.device, quick: bool):
        self.device = device
        self.rep = 40 if quick else 200

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.device.type == "cuda":
            import triton.testing

            return float(triton.testing.do_bench(fn, warmup=25, rep=self.rep, return_mode="median"))
        fn()
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3


def copy_bandwidth(device: torch.device, timer: Timer) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + bytes written per second)."""
    numel = (1 << 28) if device.type == "cuda" else (1 << 16)  # 512 MiB of bf16 on a GPU
    src = torch.randn(numel, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


# ----------------------------------------------------------------------------- ops


@dataclass
class Case:
    """One op at one shape: inputs, and per implementation a forward returning the outputs
    that carry gradient (as the models use them: depth weights are detached there)."""

    op: str
    shape: Shape
    inputs: list[torch.Tensor]
    forwards: dict[str, Callable[[bool], list[torch.Tensor]]]  # impl -> f(stats) -> outputs
    bytes: dict[str, int]  # pass -> fewest bytes moved
    stats_apply: bool = True
    leaves: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # impl -> extra grad inputs


def _norm_stats(device):
    from attnres_probe.kernels.reference import NormStats

    return NormStats(torch.zeros(1, device=device), torch.zeros(1, device=device))


def _depth_stats(n: int, partial: bool, device):
    from attnres_probe.kernels.reference import DepthStats

    def z(k):
        return torch.zeros(k, device=device)

    return DepthStats(z(n), z(1), z(1) if partial else None)


def _flash_attn_res():
    """The flash_attn_res module, or None (with the reason in ``_FAR_STATUS``)."""
    version = _version("flash-attn-res")
    try:
        import flash_attn_res
    except Exception as err:  # not installed, or does not import with this triton
        if version != "not installed":
            _FAR_STATUS["flash-attn-res"] = f"{version}, import failed: {type(err).__name__}"
        return None
    _FAR_STATUS["flash-attn-res"] = version
    return flash_attn_res


_FAR_STATUS: dict[str, str] = {}


@dataclass
class Setting:
    """What every case builder needs: where, which precision, which implementations."""

    shape: Shape
    device: torch.device
    dtype: torch.dtype
    impls: dict  # name -> module with the reference's function names
    far: object | None  # the flash_attn_res module, when importable

    @property
    def tok(self) -> tuple[int, int]:
        return (self.shape.batch, self.shape.tokens // self.shape.batch)

    @property
    def md(self) -> int:
        """Bytes of one [tokens, D] activation."""
        return self.shape.tokens * self.shape.d * (torch.finfo(self.dtype).bits // 8)

    def act(self, *lead: int) -> torch.Tensor:
        return torch.randn(*lead, *self.tok, self.shape.d, device=self.device, dtype=self.dtype)

    def param(self, *size: int) -> torch.Tensor:
        return torch.randn(*size, device=self.device)


def _rms_norm_case(st: Setting) -> Case:
    x, w = st.act(), st.param(st.shape.d)
    slots = _norm_stats(st.device)  # made once: the timings leave out allocating slots

    def fwd(fn):
        return lambda stats: [fn(x, w, 1e-6, slots if stats else None)]

    forwards = {k: fwd(v.rms_norm) for k, v in st.impls.items()}
    # read x, write y | read x and ∂L/∂y, write ∂L/∂x
    return Case("rms_norm", st.shape, [x, w], forwards, {"fwd": 2 * st.md, "bwd": 3 * st.md})


def _add_rms_norm_case(st: Setting) -> Case:
    x, u, w = st.act(), st.act(), st.param(st.shape.d)
    slots = _norm_stats(st.device)

    def fwd(fn):
        return lambda stats: list(fn(x, u, w, 1e-6, slots if stats else None))

    forwards = {k: fwd(v.add_rms_norm) for k, v in st.impls.items()}
    # read x, update, write y, h | read ∂L/∂y, ∂L/∂h, h, write ∂L/∂x (= ∂L/∂update)
    return Case("add_rms_norm", st.shape, [x, u, w], forwards, {"fwd": 4 * st.md, "bwd": 4 * st.md})


def _attnres_case(st: Setting) -> Case:
    n, m = st.shape.n, st.shape.tokens
    sources, query = st.act(n), st.param(st.shape.d)
    slots = _depth_stats(n, False, st.device)

    def fwd(fn):
        return lambda stats: [fn(sources, query, 1e-6, slots if stats else None)[0]]

    forwards = {k: fwd(v.attnres) for k, v in st.impls.items()}
    weights = n * m * 4  # the float32 depth weights the op returns (and its backward reads)
    return Case(
        "attnres",
        st.shape,
        [sources, query],
        forwards,
        {"fwd": (n + 1) * st.md + weights, "bwd": (2 * n + 1) * st.md + weights},
    )


def _phase1_case(st: Setting) -> Case:
    n, s, m = st.shape.n, st.shape.s, st.shape.tokens
    blocks, queries = st.act(n), st.param(s, st.shape.d)

    def fwd(fn):
        return lambda stats: list(fn(blocks, queries, 1e-6))

    forwards = {k: fwd(v.block_attnres_phase1) for k, v in st.impls.items()}
    if st.far is not None:
        forwards["flash-attn-res"] = fwd(st.far.phase_1_batched_attention_triton_op)
    lse = s * m * 4
    return Case(
        "block phase 1",
        st.shape,
        [blocks, queries],
        forwards,
        # read n blocks, write S outputs and lse | read blocks, ∂out, ∂lse, lse, write ∂blocks
        {"fwd": (n + s) * st.md + lse, "bwd": (2 * n + s) * st.md + 2 * lse},
        stats_apply=False,  # phase 2 emits the block statistics
    )


def _phase2_case(st: Setting) -> Case:
    n, m = st.shape.n, st.shape.tokens
    blocks, queries, partial = st.act(n), st.param(st.shape.s, st.shape.d), st.act()
    phase1 = {k: v.block_attnres_phase1 for k, v in st.impls.items()}
    if st.far is not None:
        phase1["flash-attn-res"] = st.far.phase_1_batched_attention_triton_op
    rows = {}  # impl -> (out₁ row as a leaf, lse row, logits row or None)
    with torch.no_grad():
        for k, fn in phase1.items():
            out1, lse1, *logits1 = fn(blocks, queries, 1e-6)
            logits = logits1[0][1].detach() if logits1 else None
            rows[k] = out1[1].detach().requires_grad_(), lse1[1].detach(), logits
    rows.update({k: rows["eager"] for k in st.impls if k not in rows})

    slots = _depth_stats(n, True, st.device)

    def fwd(fn, key):
        o1, l1, z1 = rows[key]
        return lambda stats: [
            fn(o1, l1, z1, partial, queries[1], 1e-6, slots if stats else None)[0]
        ]

    forwards = {k: fwd(v.block_attnres_phase2, k) for k, v in st.impls.items()}
    if st.far is not None:
        o1_far, l1_far, _ = rows["flash-attn-res"]
        merge = st.far.phase_2_online_softmax_merge_triton_op
        forwards["flash-attn-res"] = lambda stats: [
            merge(partial, queries[1], o1_far, l1_far, 1e-6)
        ]
    # read out₁, partial (+ lse, the n block logits), write out (+ the n+1 depth weights)
    small = (2 * n + 3) * m * 4
    return Case(
        "block phase 2",
        st.shape,
        [partial],
        forwards,
        {"fwd": 3 * st.md + small, "bwd": 5 * st.md + 2 * m * 4},
        leaves={k: [rows[k][0]] for k in forwards},
    )


def _block_case(st: Setting) -> Case:
    """One whole block: phase 1 over n completed blocks, then S−1 merges with partial sums
    (given here, as the sublayers would produce them)."""
    n, s, m = st.shape.n, st.shape.s, st.shape.tokens
    blocks, queries, partials = st.act(n), st.param(s, st.shape.d), st.act(s)

    slots = [_depth_stats(n, True, st.device) for _ in range(s)]

    def ours(mod):
        def run(stats):
            out1, lse1, logits1 = mod.block_attnres_phase1(blocks, queries, 1e-6)
            outs = [out1[0]]
            for i in range(1, s):
                outs.append(
                    mod.block_attnres_phase2(
                        out1[i], lse1[i], logits1[i], partials[i], queries[i], 1e-6,
                        slots[i] if stats else None,
                    )[0]
                )  # fmt: skip
            return outs

        return run

    forwards = {k: ours(v) for k, v in st.impls.items()}
    if st.far is not None:
        far = st.far

        def theirs(stats):
            out1, lse1 = far.phase_1_batched_attention_triton_op(blocks, queries, 1e-6)
            return [out1[0]] + [
                far.phase_2_online_softmax_merge_triton_op(
                    partials[i], queries[i], out1[i], lse1[i], 1e-6
                )
                for i in range(1, s)
            ]

        forwards["flash-attn-res"] = theirs
    lse = s * m * 4
    # Phase 1 as above; each merge then reads its partial sum and writes its output (out₁
    # rows are read once by phase 2 instead of being written then read: counted once).
    merges = s - 1
    return Case(
        "block (phase 1 + S merges)",
        st.shape,
        [blocks, queries, partials],
        forwards,
        {
            "fwd": (n + s) * st.md + lse + merges * 2 * st.md,
            "bwd": (2 * n + s) * st.md + 2 * lse + merges * 4 * st.md,
        },
    )


CASE_BUILDERS = {
    "rms_norm": _rms_norm_case,
    "add_rms_norm": _add_rms_norm_case,
    "attnres": _attnres_case,
    "phase1": _phase1_case,
    "phase2": _phase2_case,
    "block": _block_case,
}
COMPILED = {  # reference function compiled for each op
    "rms_norm": "rms_norm",
    "add_rms_norm": "add_rms_norm",
    "attnres": "attnres",
    "phase1": "block_attnres_phase1",
    "phase2": "block_attnres_phase2",
}


def make_cases(shape: Shape, device, dtype, ops: tuple[str, ...], with_compile: bool) -> list:
    from attnres_probe.kernels import dispatch_triton, reference

    impls = {"triton": dispatch_triton, "eager": reference}
    if with_compile:
        compiled = types.SimpleNamespace(
            **{name: torch.compile(getattr(reference, name), dynamic=False)
               for name in set(COMPILED.values())}
        )  # fmt: skip
        impls["compile"] = compiled
    st = Setting(shape, device, dtype, impls, _flash_attn_res())
    return [CASE_BUILDERS[op](st) for op in ops]


def _requires_grad(inputs):
    for t in inputs:
        if t.is_floating_point():
            t.requires_grad_(True)


def _measure(forward, stats: bool, leaves: list[torch.Tensor], timer: Timer) -> dict:
    """Milliseconds of the forward alone, the backward alone and both, for one setting."""
    outs = forward(stats)
    grads = [torch.randn_like(o) for o in outs]

    def fwd_only():
        with torch.no_grad():
            forward(stats)

    def bwd_only():
        torch.autograd.grad(outs, leaves, grads, retain_graph=True, allow_unused=True)

    def both():
        torch.autograd.grad(forward(stats), leaves, grads, allow_unused=True)

    return {"fwd": timer(fwd_only), "bwd": timer(bwd_only), "fwd+bwd": timer(both)}


def time_case(case: Case, timer: Timer, copy_gbps: float, stats_modes) -> list[Row]:
    _requires_grad(case.inputs)
    rows = []
    eager_ms: dict[tuple[str, bool], float] = {}
    for impl, forward in case.forwards.items():
        for stats in stats_modes:
            if stats and not case.stats_apply:
                continue
            if stats and impl == "flash-attn-res":
                continue  # it has no statistics
            try:
                leaves = [t for t in case.inputs if t.requires_grad]
                measured = _measure(forward, stats, leaves + case.leaves.get(impl, []), timer)
                note = ""
            except Exception as err:  # record, keep measuring the others
                measured = dict.fromkeys(PASSES)
                note = f"{type(err).__name__}: {str(err).splitlines()[0][:80]}"
            for pass_, ms in measured.items():
                nbytes = (
                    case.bytes["fwd"] + case.bytes["bwd"]
                    if pass_ == "fwd+bwd"
                    else case.bytes[pass_]
                )
                row = Row(case.op, pass_, impl, stats, case.shape.label(), ms, nbytes, note=note)
                if ms:
                    row.gbps = nbytes / (ms * 1e-3) / 1e9
                    row.copy_fraction = row.gbps / copy_gbps
                if impl == "eager" and ms:
                    eager_ms[(pass_, stats)] = ms
                rows.append(row)
    far_ms = {r.pass_: r.ms for r in rows if r.impl == "flash-attn-res" and r.ms}
    for row in rows:
        ref = eager_ms.get((row.pass_, row.stats)) or eager_ms.get((row.pass_, False))
        if row.ms and ref:
            row.speedup_vs_eager = ref / row.ms
        if row.ms and row.pass_ in far_ms and row.impl != "flash-attn-res":
            row.speedup_vs_flash_attn_res = far_ms[row.pass_] / row.ms
    return rows


# ----------------------------------------------------------------------------- training step


def training_step(
    residual: str, backend: str, record: bool, args, device, timer_steps: int
) -> dict:
    from attnres_probe.hooks.taps import native_recording
    from attnres_probe.models.config import ModelConfig
    from attnres_probe.models.model import build_model

    cfg = ModelConfig(
        residual=residual,
        n_layers=args.step_layers,
        d_model=args.step_d_model,
        n_heads=max(1, args.step_d_model // 128),
        n_blocks=args.step_blocks,
        max_seq_len=args.step_seq,
    )
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    idx = torch.randint(0, cfg.vocab_size, (args.step_batch, args.step_seq), device=device)
    recording = native_recording(model)
    amp = (
        torch.autocast(device.type, torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )

    def step():
        model.recording = recording if record else None
        with amp:
            logits = model(idx)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), idx.flatten())
        loss.backward()
        if record:
            recording.settle()
            recording.reset()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = []
    previous = os.environ.get("ATTNRES_PROBE_KERNELS")
    os.environ["ATTNRES_PROBE_KERNELS"] = backend
    try:
        for i in range(timer_steps + 3):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 3:  # warm-up: compilation, autotuning, allocator
                times.append((time.perf_counter() - start) * 1e3)
    finally:
        if previous is None:
            os.environ.pop("ATTNRES_PROBE_KERNELS")
        else:
            os.environ["ATTNRES_PROBE_KERNELS"] = previous
    tokens = args.step_batch * args.step_seq
    ms = statistics.median(times)
    return {
        "model": f"{residual} L={cfg.n_layers} D={cfg.d_model} blocks={cfg.n_blocks}",
        "residual": residual,
        "kernels": backend,
        "stats": record,
        "tokens": tokens,
        "ms": ms,
        "tokens_per_s": tokens / (ms * 1e-3),
    }


# ----------------------------------------------------------------------------- report


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def header(device, copy_gbps: float, shape: Shape, dry_run: bool) -> dict:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (interpreter)"
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": gpu,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "flash-attn-res": _FAR_STATUS.get("flash-attn-res", _version("flash-attn-res")),
        "python": platform.python_version(),
        "dtype": "bfloat16",
        "shape": shape.label(),
        "copy_bandwidth_gbps": round(copy_gbps, 1),
        "dry_run": dry_run,
    }


def markdown(report: Report) -> str:
    h = report.header
    lines = [
        "# Kernel benchmark",
        "",
        f"device **{h['device']}** · CUDA {h['cuda']} · torch {h['torch']} · triton "
        f"{h['triton']} · flash-attn-res {h['flash-attn-res']} · {h['dtype']} · measured copy "
        f"bandwidth {h['copy_bandwidth_gbps']} GB/s · {h['date']}"
        + (" · **DRY RUN: timings meaningless**" if h["dry_run"] else ""),
        "",
        "| op | shape | pass | impl | stats | ms | GB/s | of copy BW | vs eager "
        "| vs flash-attn-res | note |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
    for r in report.rows:
        lines.append(
            f"| {r.op} | {r.shape} | {r.pass_} | {r.impl} | {'on' if r.stats else 'off'} | "
            f"{fmt(r.ms, '.3f')} | {fmt(r.gbps, '.0f')} | {fmt(r.copy_fraction, '.0%')} | "
            f"{fmt(r.speedup_vs_eager, '.2f')}{'×' if r.speedup_vs_eager else ''} | "
            f"{fmt(r.speedup_vs_flash_attn_res, '.2f')}{'×' if r.speedup_vs_flash_attn_res else ''}"
            f" | {r.note} |"
        )
    if report.steps:
        lines += [
            "",
            "## Training step (forward + backward + AdamW, bf16 autocast)",
            "",
            "| model | kernels | stats | ms/step | tokens/s | vs baseline |",
            "|---|---|---|---:|---:|---:|",
        ]
        base = next((s["ms"] for s in report.steps if s["residual"] == "baseline"), None)
        for s in report.steps:
            ratio = f"{s['ms'] / base:.3f}×" if base else ""
            lines.append(
                f"| {s['model']} | {s['kernels']} | {'on' if s['stats'] else 'off'} | "
                f"{s['ms']:.1f} | {s['tokens_per_s']:.0f} | {ratio} |"
            )
    return "\n".join(lines) + "\n"


def write(report: Report, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    slug = "-".join("".join(c if c.isalnum() else " " for c in report.header["device"]).split())
    slug = slug.lower()
    stem = out / f"kernels-{slug}{'-dry-run' if report.header['dry_run'] else ''}"
    data = {"header": report.header, "rows": [asdict(r) for r in report.rows]}
    data["training_steps"] = report.steps
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(data, indent=1) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path


# ----------------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="write JSON + markdown here (benchmarks/results)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions, smaller sweep")
    p.add_argument("--no-sweep", action="store_true", help="only the paper-like shape")
    p.add_argument("--no-step", action="store_true", help="skip the training-step comparison")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument(
        "--ops",
        default=",".join(CASE_BUILDERS),
        help=f"comma-separated subset of {','.join(CASE_BUILDERS)}",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="run every measurement once at toy sizes on any device (CPU: the Triton "
        "interpreter) to check the script; timings are meaningless",
    )
    p.add_argument("--step-layers", type=int, default=32)
    p.add_argument("--step-d-model", type=int, default=1024)
    p.add_argument("--step-blocks", type=int, default=8)
    p.add_argument("--step-batch", type=int, default=8)
    p.add_argument("--step-seq", type=int, default=1024)
    p.add_argument("--step-iters", type=int, default=10)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not torch.cuda.is_available() and not args.dry_run:
        print(
            "benchmarks/kernels.py measures GPU kernels and needs CUDA, but "
            "torch.cuda.is_available() is False here; nothing was measured. "
            "(--dry-run checks the script on the CPU through the Triton interpreter.)",
            file=sys.stderr,
        )
        return 2
    if args.dry_run and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16
    timer = Timer(device, args.quick or args.dry_run)
    with_compile = not args.no_compile and device.type == "cuda"

    if args.dry_run:
        main_shape = Shape(tokens=24, d=40, n=3, s=2, batch=2)
        sweep = [Shape(tokens=24, d=24, n=2, s=2, batch=2)] if not args.no_sweep else []
        args.step_layers, args.step_d_model, args.step_blocks = 2, 32, 2
        args.step_batch, args.step_seq, args.step_iters = 2, 8, 1
    else:
        main_shape = Shape()
        ns = (2, 8, 32) if args.quick else (2, 4, 8, 16, 32)
        ds = (1024, 4096) if args.quick else (1024, 2048, 4096, 8192)
        sweep = [] if args.no_sweep else (
            [Shape(n=n) for n in ns if n != main_shape.n]
            + [Shape(d=d) for d in ds if d != main_shape.d]
        )  # fmt: skip

    copy_gbps = copy_bandwidth(device, timer)
    report = Report(header(device, copy_gbps, main_shape, args.dry_run))
    chosen = tuple(op.strip() for op in args.ops.split(",") if op.strip())
    unknown = [op for op in chosen if op not in CASE_BUILDERS]
    if unknown:
        print(f"--ops: unknown {unknown}; choose from {','.join(CASE_BUILDERS)}", file=sys.stderr)
        return 2
    depth_ops = tuple(op for op in chosen if op in ("attnres", "phase1", "block"))
    # Main shape: everything, statistics off and on. Sweep: N moves only the depth ops.
    plan = [(main_shape, chosen, (False, True))]
    plan += [(sh, depth_ops if sh.n != main_shape.n else chosen, (False,)) for sh in sweep]
    for shape, ops_, stats_modes in plan:
        for case in make_cases(shape, device, dtype, ops_, with_compile):
            report.rows += time_case(case, timer, copy_gbps, stats_modes)
            if args.out:  # after every case: a run stopped part-way keeps what it measured
                report.header = header(device, copy_gbps, main_shape, args.dry_run)
                write(report, args.out)
            torch.cuda.empty_cache() if device.type == "cuda" else None
    if not args.no_step:
        runs = [
            ("baseline", "triton", False),
            ("block", "triton", False),
            ("block", "triton", True),
            ("block", "reference", False),
        ]
        for residual, backend, record in runs:
            try:
                report.steps.append(
                    training_step(residual, backend, record, args, device, args.step_iters)
                )
            except torch.OutOfMemoryError as err:
                report.steps.append(
                    {"model": residual, "residual": residual, "kernels": backend,
                     "stats": record, "tokens": 0, "ms": float("nan"),
                     "tokens_per_s": float("nan"), "note": str(err).splitlines()[0]}
                )  # fmt: skip
            if device.type == "cuda":
                torch.cuda.empty_cache()
    report.header = header(device, copy_gbps, main_shape, args.dry_run)  # with import status
    print(markdown(report))
    if args.out:
        paths = write(report, args.out)
        print("wrote " + " and ".join(str(p) for p in paths), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
