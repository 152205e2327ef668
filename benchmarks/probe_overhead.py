"""Training-step time with the probe (every=1, every=10) against no probe and a naive probe.

All variants train their own copy of one model side by side in one process, interleaved step
by step (order shuffled every time), so machine load hits them alike. A variant's time is
summed over chunks of ``--chunk`` of its own steps (every=10: one recorded step per chunk);
its overhead is the median over chunks of (its chunk time / the no-probe chunk time of the
same round), a paired ratio that cancels slow drifts in machine load.

Variants: no probe; no probe again on a second copy (an A/A pair: how far apart two identical
variants land, the noise floor of the ratios); the statistics alone (the probe's
``ops.Recording`` handed to the model, settled and reset each step, nothing read: what the
kernels' by-products cost on this device); the probe
at every=1 and every=10 (statistics, hooks, parameter-gradient norms, store writes); and a
naive probe that calls ``.item()`` per sublayer per step (one device->host sync each on a GPU).

Time is the process's CPU time on CPU (robust to other load on a shared machine; torch runs
one thread by default here) and synchronised wall time on CUDA.

    .venv/bin/python benchmarks/probe_overhead.py                       # CPU, 3 residual kinds
    .venv/bin/python benchmarks/probe_overhead.py --device cuda --d-model 1024 --batch 16
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from attnres_probe.hooks import probe
from attnres_probe.hooks.taps import native_recording
from attnres_probe.models import ModelConfig, build_model


class NaiveProbe:
    """Per-sublayer ``.item()`` hooks: RMS of each output, norm of its gradient, per-layer
    parameter gradient norms; values go to Python lists every step."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.values: list[float] = []
        self.handles = []

    def __enter__(self) -> NaiveProbe:
        for _, sub in self.model.sublayers():
            self.handles.append(sub.register_forward_hook(self._on_output))
        return self

    def _on_output(self, module, args, out):
        self.values.append(out.detach().pow(2).mean().sqrt().item())
        if out.requires_grad:
            out.register_hook(lambda g: self.values.append(g.norm().item()))

    def step(self, loss: torch.Tensor) -> None:
        self.values.append(loss.item())
        for layer in self.model.layers:
            sq = sum(p.grad.pow(2).sum() for p in layer.parameters() if p.grad is not None)
            self.values.append(float(sq) ** 0.5)
        self.values.clear()

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()


class OpsStatsOnly:
    """The statistics the probe asks this model for (its own recording), taken every step and
    never read: what the ops and the model's forward add, without the probe around them."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.rec = native_recording(model)

    def __enter__(self) -> OpsStatsOnly:
        self.model.recording = self.rec
        return self

    def __exit__(self, *exc) -> None:
        self.model.recording = None

    def step(self, loss: torch.Tensor) -> None:
        self.rec.settle()
        self.rec.reset()


class Variant:
    def __init__(self, name: str, model, batch, make_probe):
        self.name = name
        self.model = model
        self.batch = batch
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.stack = contextlib.ExitStack()
        self.probe = self.stack.enter_context(make_probe(model)) if make_probe else None
        self.chunk_ms: list[float] = []

    def train_step(self) -> None:
        x = self.batch
        loss = F.cross_entropy(self.model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        if self.probe is not None:
            self.probe.step(loss=loss)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_kind(kind: str, args, root: Path) -> list[Variant]:
    cfg = ModelConfig(
        residual=kind,
        n_layers=args.layers,
        d_model=args.d_model,
        n_heads=args.heads,
        n_blocks=args.blocks,
        max_seq_len=args.seq,
    )
    torch.manual_seed(0)
    base = build_model(cfg).to(args.device)
    batch = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), device=args.device)
    makers = {
        "no probe": None,
        "no probe, second copy (noise floor)": None,
        "ops statistics only": OpsStatsOnly,
        "probe every=1": lambda m: probe(m, root / f"{kind}-1", every=1),
        "probe every=10": lambda m: probe(m, root / f"{kind}-10", every=10),
        "naive .item() every=1": NaiveProbe,
    }
    variants = [Variant(n, copy.deepcopy(base), batch, mk) for n, mk in makers.items()]
    # On CPU the process's CPU time: other processes on a shared machine do not inflate it.
    clock = time.perf_counter if args.device.startswith("cuda") else time.process_time
    try:
        for v in variants:  # warm-up: allocator, first store flush, lazy imports
            for _ in range(args.chunk):
                v.train_step()
        rng = random.Random(0)
        for _ in range(args.rounds):
            spent = dict.fromkeys(variants, 0.0)
            for _ in range(args.chunk):  # step-by-step interleaving: load hits all alike
                order = variants[:]
                rng.shuffle(order)
                for v in order:
                    _sync(args.device)
                    t0 = clock()
                    v.train_step()
                    _sync(args.device)
                    spent[v] += clock() - t0
            for v in variants:
                v.chunk_ms.append(spent[v] * 1e3 / args.chunk)
    finally:
        for v in variants:
            v.stack.close()
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--kinds", nargs="+", default=["baseline", "full", "block"])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=10, help="steps per timed chunk")
    parser.add_argument("--rounds", type=int, default=20, help="chunks per variant")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"device={args.device} threads={args.threads} layers={args.layers} "
        f"d_model={args.d_model} batch={args.batch}x{args.seq}; "
        f"{args.rounds} chunks x {args.chunk} steps per variant, interleaved step by step\n"
    )
    print("| residual | variant | ms/step (median) | × no probe (median of paired chunks) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds:
            variants = run_kind(kind, args, Path(tmp))
            reference = variants[0].chunk_ms
            for v in variants:
                ratio = statistics.median(a / b for a, b in zip(v.chunk_ms, reference, strict=True))
                print(
                    f"| {kind} | {v.name} | {statistics.median(v.chunk_ms):.2f} | {ratio:.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
