"""Training-step time of Full and Block AttnRes against the baseline, eager and compiled.

A step is forward + backward + AdamW on one batch (B·T tokens). Every variant trains its own
copy of its model in one process; after a warm-up (which compiles the compiled ones), the
variants take one step each per round, in a shuffled order, so machine load hits them alike. A
variant's ratio is the median over rounds of (its step time / the baseline's step time in the
same mode and round): a paired ratio that cancels slow drifts in load. A ``KIND+stats`` variant
records the ops' statistics the probe asks for (its slots, settled and reset every step, never
read) and is also given paired against ``KIND`` without them.

Time is the process's CPU time on CPU (one torch thread: robust to other work on a shared
machine) and synchronised wall time on CUDA. A variant that fails to compile or to run is
reported with its error and left out; the others go on. Compiled variants report how many
graphs dynamo made and how many graph breaks it took while warming up.

    .venv/bin/python benchmarks/train_step.py --quick                     # one size, few rounds
    .venv/bin/python benchmarks/train_step.py --out benchmarks/results/train_step_cpu.md
    python benchmarks/train_step.py --device cuda --layers 32 --d-model 1024 --heads 8 \\
        --blocks 8 --batch 8 --seq 1024 --autocast bf16 --variants baseline,block,block+stats
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from attnres_probe.hooks.taps import native_recording
from attnres_probe.models import ModelConfig, build_model
from attnres_probe.models.config import RESIDUAL_KINDS
from attnres_probe.resources import cpu_name

MODES = ("eager", "compiled")
# Targets: the step of each variant over the baseline's (× baseline), per device type.
TARGETS = {
    "cpu": {"block": 1.15, "full": 1.6},
    "cuda": {"block": 1.05, "block+stats": 1.05},
}
STATS_TARGET = 1.03  # KIND+stats over KIND


@dataclass
class Variant:
    kind: str
    stats: bool
    mode: str
    step: Callable[[], None] | None = None
    ms: list[float] = field(default_factory=list)
    error: str = ""
    graphs: int | None = None  # made by dynamo during the warm-up (compiled only)
    breaks: int | None = None  # graph breaks taken during the warm-up
    timed_graphs: int = 0  # made in a timed step: recompiles the warm-up did not settle
    warmup_s: float | None = None  # wall time of building and warming up (compiling) it

    @property
    def name(self) -> str:
        return self.kind + ("+stats" if self.stats else "")


def parse_variants(text: str) -> list[tuple[str, bool]]:
    """``baseline,full,block+stats`` -> [(kind, stats)]; the baseline is always first."""
    chosen = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        kind, _, suffix = item.partition("+")
        if kind not in RESIDUAL_KINDS or suffix not in ("", "stats"):
            raise ValueError(
                f"--variants: {item!r} is not a variant; use KIND or KIND+stats with KIND one "
                f"of {', '.join(RESIDUAL_KINDS)}"
            )
        chosen.append((kind, suffix == "stats"))
    if ("baseline", False) not in chosen:
        chosen.insert(0, ("baseline", False))
    chosen.sort(key=lambda v: v != ("baseline", False))
    return chosen


def config(kind: str, layers: int, d_model: int, args) -> ModelConfig:
    return ModelConfig(
        residual=kind,
        n_layers=layers,
        d_model=d_model,
        n_heads=args.heads,
        n_blocks=args.blocks,
        max_seq_len=args.seq,
    )


def make_step(model, batch, stats: bool, compiled: bool, args) -> Callable[[], None]:
    """One training step of ``model`` (compiled with ``args.backend`` when ``compiled``)."""
    device = torch.device(args.device)
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **fused)
    forward = torch.compile(model, backend=args.backend) if compiled else model
    rec = native_recording(model) if stats else None
    amp = (
        torch.autocast(device.type, torch.bfloat16)
        if args.autocast == "bf16"
        else contextlib.nullcontext()
    )
    inputs, targets = batch[:, :-1], batch[:, 1:].flatten()

    def step() -> None:
        model.recording = rec
        with amp:
            logits = forward(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets)
        loss.backward()
        if rec is not None:
            rec.settle()
            rec.reset()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _dynamo_counts() -> tuple[int, int]:
    """(graphs compiled, graph breaks taken) so far, from dynamo's counters."""
    counters = torch._dynamo.utils.counters
    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def _error(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:160] if lines else ''}"


def run_size(
    layers: int, d_model: int, args, progress: Callable[[list[dict]], None]
) -> list[Variant]:
    """Build, warm up and time every variant of one model size; ``progress`` is given the
    table rows of this size after each warm-up and after the timing."""
    device = torch.device(args.device)
    torch._dynamo.reset()  # compiled code of another size never serves this one
    torch.manual_seed(0)
    batch = torch.randint(0, 256, (args.batch, args.seq + 1), device=device)
    variants: list[Variant] = []
    for mode in args.modes:
        for kind, stats in args.plan:
            v = Variant(kind, stats, mode)
            variants.append(v)
            cfg = config(kind, layers, d_model, args)
            torch.manual_seed(0)
            warmup_started = time.perf_counter()
            try:
                with device:
                    model = build_model(cfg)
                v.step = make_step(model, batch, stats, mode == "compiled", args)
                graphs0, breaks0 = _dynamo_counts()
                for _ in range(args.warmup):  # compiles, autotunes, fills the allocator
                    v.step()
                _sync(device)
                if mode == "compiled":
                    graphs, breaks = _dynamo_counts()
                    v.graphs, v.breaks = graphs - graphs0, breaks - breaks0
            except Exception as err:  # report it in the table; measure the others
                v.error, v.step = _error(err), None
            v.warmup_s = time.perf_counter() - warmup_started
            print(f"  warmed up {layers}L d{d_model} {mode} {v.name} in {v.warmup_s:.0f} s: "
                  f"{v.error or 'ok'}", file=sys.stderr, flush=True)  # fmt: skip
            progress(rows_for(layers, d_model, variants, device.type))
    live = [v for v in variants if v.step is not None]
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    rng = random.Random(0)
    started = time.perf_counter()
    for _ in range(args.rounds):
        order = live[:]
        rng.shuffle(order)
        for v in order:
            graphs0, _ = _dynamo_counts()
            _sync(device)
            t0 = clock()
            try:
                v.step()
            except Exception as err:  # e.g. a recompile limit hit: drop the variant whole
                v.error, v.ms = _error(err), []
                live.remove(v)
                continue
            _sync(device)
            v.ms.append((clock() - t0) * 1e3)
            v.timed_graphs = _dynamo_counts()[0] - graphs0
            if v.timed_graphs:  # recompiling every step: its times would be compile times
                v.error = f"recompiled while timed ({v.timed_graphs} graphs in one step); dropped"
                v.ms = []
                live.remove(v)
        if args.budget and time.perf_counter() - started > args.budget:
            break
    progress(rows_for(layers, d_model, variants, device.type))
    return variants


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def paired_ratio(a: Variant | None, b: Variant | None) -> float | None:
    """Median over rounds of a's step time / b's step time in the same round."""
    if a is None or b is None or not a.ms or len(a.ms) != len(b.ms):
        return None
    return statistics.median(x / y for x, y in zip(a.ms, b.ms, strict=True))


def rows_for(layers: int, d_model: int, variants: list[Variant], device_type: str) -> list[dict]:
    by_key = {(v.mode, v.kind, v.stats): v for v in variants}
    rows = []
    for v in variants:
        base = by_key.get((v.mode, "baseline", False))
        ratio = paired_ratio(v, base) if v.ms and base is not None and base.ms else None
        stats_ratio = paired_ratio(v, by_key.get((v.mode, v.kind, False))) if v.stats else None
        target = TARGETS.get(device_type, {}).get(v.name)
        rows.append(
            {
                "layers": layers,
                "d_model": d_model,
                "mode": v.mode,
                "variant": v.name,
                "ms": statistics.median(v.ms) if v.ms else None,
                "rounds": len(v.ms),
                "x_baseline": ratio,
                "target": target,
                "met": None if ratio is None or target is None else ratio <= target,
                "x_without_stats": stats_ratio,
                "graphs": v.graphs,
                "graph_breaks": v.breaks,
                "graphs_while_timed": v.timed_graphs,
                "warmup_s": v.warmup_s,
                "error": v.error,
            }
        )
    return rows


def machine(device: torch.device) -> str:
    """The device (GPU) or processor (CPU) the steps ran on, in words."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (
            f"{props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB), "
            f"CUDA {torch.version.cuda}"
        )
    return f"{cpu_name()}, {os.cpu_count()} cores"


def markdown(rows: list[dict], args, argv: list[str], elapsed: float) -> str:
    fmt = lambda value, spec: "" if value is None else format(value, spec)  # noqa: E731
    tokens = args.batch * args.seq
    head = [
        "# Training step: AttnRes against the baseline",
        "",
        f"command: `python benchmarks/train_step.py {shlex.join(argv)}`",
        "",
        f"date {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')} · torch {torch.__version__}"
        f" · python {platform.python_version()} · {machine(torch.device(args.device))} · threads "
        f"{torch.get_num_threads()} · device {args.device}",
        "",
        f"forward + backward + AdamW, B·T = {args.batch}×{args.seq} = {tokens} tokens, "
        f"heads {args.heads}, blocks {args.blocks}, autocast {args.autocast}, compile backend "
        f"{args.backend}; {args.warmup} warm-up steps, then up to {args.rounds} rounds, one step "
        "of each variant per round in a shuffled order; time = "
        + ("synchronised wall time" if args.device.startswith("cuda") else "process CPU time")
        + f"; × baseline = median over rounds of the paired ratio to the baseline of the same "
        f"mode; run took {elapsed:.0f} s",
    ]
    if args.dry_run:
        head += ["", "**DRY RUN: toy sizes, timings meaningless**"]
    lines = head + [
        "",
        "| layers | d_model | mode | variant | ms/step | rounds | × baseline | target "
        "| × without stats | warm-up s | graphs / breaks | note |",
        "|---:|---:|---|---|---:|---:|---:|---|---:|---:|---|---|",
    ]
    for r in rows:
        target = ""
        if r["target"] is not None:
            target = f"≤ {r['target']:.2f}" + (
                "" if r["met"] is None else " ✓" if r["met"] else " ✗"
            )
        compiled = "" if r["graphs"] is None else f"{r['graphs']} / {r['graph_breaks']}"
        ratio = fmt(r["x_baseline"], ".3f")
        lines.append(
            f"| {r['layers']} | {r['d_model']} | {r['mode']} | {r['variant']} | "
            f"{fmt(r['ms'], '.1f')} | {r['rounds']} | {ratio + '×' if ratio else ''} | {target} | "
            f"{fmt(r['x_without_stats'], '.3f')} | {fmt(r['warmup_s'], '.0f')} | {compiled} | "
            f"{r['error']} |"
        )
    lines += [
        "",
        f"Targets: {', '.join(f'{k} ≤ {v}×' for k, v in TARGETS['cpu'].items())} the baseline "
        f"on CPU; {', '.join(f'{k} ≤ {v}×' for k, v in TARGETS['cuda'].items())} on CUDA; "
        f"statistics on ≤ {STATS_TARGET}× off. graphs / breaks: what dynamo compiled and the "
        "graph breaks it took during the warm-up (compiled mode only).",
    ]
    return "\n".join(lines) + "\n"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--layers", type=int, nargs="+", default=[8, 16])
    p.add_argument("--d-model", type=int, nargs="+", default=[128, 256])
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--blocks", type=int, default=4, help="Block AttnRes blocks")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--variants", default="baseline,full,block", help="KIND or KIND+stats, ...")
    p.add_argument("--modes", default="eager,compiled", help="eager, compiled or both")
    p.add_argument("--backend", default="inductor", help="torch.compile backend")
    p.add_argument("--autocast", choices=("none", "bf16"), default="none")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant")
    p.add_argument("--rounds", type=int, default=20, help="timed steps per variant")
    p.add_argument("--budget", type=float, default=0, help="stop timing a size after S seconds")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--quick", action="store_true", help="one size (8 layers, d 128), 8 rounds")
    p.add_argument("--dry-run", action="store_true", help="toy sizes: checks the script only")
    p.add_argument("--out", type=Path, help="write the markdown table here")
    p.add_argument("--json", type=Path, help="write the rows as JSON here")
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in MODES]
    if bad or not args.modes:
        p.error(f"--modes: {bad or args.modes} is not a mode; use eager, compiled or both")
    try:
        args.plan = parse_variants(args.variants)
    except ValueError as err:
        p.error(str(err))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: torch.cuda.is_available() is False; use --device cpu")
    if args.quick:
        args.layers, args.d_model, args.rounds = [8], [128], 8
    if args.dry_run:
        args.layers, args.d_model, args.heads, args.blocks = [2], [32], 2, 2
        args.batch, args.seq, args.warmup, args.rounds = 2, 8, 1, 2
    for layers in args.layers:
        for d_model in args.d_model:
            for kind, _ in args.plan:
                try:
                    config(kind, layers, d_model, args)
                except ValueError as err:
                    p.error(str(err))
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    torch.set_num_threads(args.threads)
    for name in ("recompile_limit", "accumulated_recompile_limit"):  # one graph per variant
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))
    started = time.perf_counter()
    device_type = torch.device(args.device).type
    rows: list[dict] = []

    def write(current: list[dict]) -> None:
        """The tables so far: a run stopped part-way keeps what it has."""
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(markdown(current, args, argv, time.perf_counter() - started))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            data = {"dry_run": args.dry_run, "rows": current}
            args.json.write_text(json.dumps(data, indent=1) + "\n")

    for layers in args.layers:
        for d_model in args.d_model:
            variants = run_size(layers, d_model, args, lambda size: write(rows + size))
            rows.extend(rows_for(layers, d_model, variants, device_type))
            if device_type == "cuda":
                torch.cuda.empty_cache()
    print(markdown(rows, args, argv, time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
