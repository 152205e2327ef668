"""Run-store benchmark: append cost per recorded step, and open + load of a long run.

    .venv/bin/python benchmarks/store_bench.py [--steps 100000] [--sublayers 96]
        [--save benchmarks/results/store_bench.txt]

Append: the full schema (every variable of the run schema, plus the model-output op) for a
run of ``--sublayers`` sublayers whose depth weights span 16 sources (Block AttnRes with
14 blocks: embedding, 14 blocks, partial sum), through ``RunWriter``
with its default flush size; the figure is wall time of append() calls (flushes included)
divided by steps. Read: a ``--steps``-step run is written, then opened with ``open_run``
and loaded the way the dashboard uses it: every variable except depth_weights in full (they
are in RAM when open_run returns), depth_weights at one step and as the mean of the last 10 %
of steps (what the heatmaps show). A full load of depth_weights is timed separately.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from attnres_probe.store import SCHEMA_VARIABLES, RunWriter, open_run, schema_coords

SOURCES = 16
FLUSH = 64  # RunWriter's default flush_every


def _schema(n_sub: int) -> tuple[dict, dict, dict]:
    n_layers = n_sub // 2
    coords = schema_coords(n_layers, [f"s{i}" for i in range(SOURCES)])
    attrs = {"residual": "block", "n_layers": n_layers, "model_config": "{}"}
    return dict(SCHEMA_VARIABLES), coords, attrs


def _step_values(rng: np.random.Generator, n_sub: int) -> dict[str, np.ndarray]:
    w = rng.random((n_sub, SOURCES), dtype=np.float32)
    w[np.triu_indices(n_sub, 1, SOURCES)] = np.nan  # sources that do not exist yet
    return {
        "loss": np.float32(rng.random()),
        "hidden_rms": rng.random(n_sub, dtype=np.float32),
        "update_rms": rng.random(n_sub, dtype=np.float32),
        "grad_norm": rng.random(n_sub, dtype=np.float32),
        "param_grad_norm": rng.random(n_sub // 2, dtype=np.float32),
        "depth_weights": w,
        "depth_entropy": rng.random(n_sub, dtype=np.float32),
        "cos_in_out": rng.random(n_sub // 2, dtype=np.float32),
        "nonfinite": np.float32(0),
        "depth_weights_out": rng.random(SOURCES, dtype=np.float32),
        "depth_entropy_out": np.float32(rng.random()),
    }


def bench_append(root: Path, n_sub: int, steps: int, repeats: int) -> tuple[list, list]:
    """(wall ms, CPU ms) per appended step, flushes included, one figure per repeat. CPU time
    counts every thread of the process; it says what a step costs on a machine shared with
    other work, where wall time also counts waiting for a core."""
    variables, coords, attrs = _schema(n_sub)
    rng = np.random.default_rng(0)
    pool = [_step_values(rng, n_sub) for _ in range(64)]
    wall, cpu = [], []
    for r in range(repeats):
        path = root / f"append{r}"
        writer = RunWriter(path, variables, coords, attrs, flush_every=FLUSH)
        start, start_cpu = time.perf_counter(), time.process_time()
        for s in range(steps):
            writer.append(s, pool[s % len(pool)])
        wall.append((time.perf_counter() - start) / steps * 1e3)
        cpu.append((time.process_time() - start_cpu) / steps * 1e3)
        writer.close()
        shutil.rmtree(path)
    return wall, cpu


def write_long_run(path: Path, n_sub: int, steps: int) -> None:
    """A ``steps``-step run with the same layout as the probe's (flushed every 256 steps to
    write it faster; the chunks are the same 256 steps as with the default flush)."""
    variables, coords, attrs = _schema(n_sub)
    rng = np.random.default_rng(1)
    pool = [_step_values(rng, n_sub) for _ in range(64)]
    with RunWriter(path, variables, coords, attrs, flush_every=256) as writer:
        for s in range(steps):
            writer.append(s, pool[s % len(pool)])


def bench_read(path: Path, repeats: int) -> dict[str, float]:
    """Seconds for each way of reading the run (best of ``repeats``; warm page cache)."""
    best: dict[str, float] = {}

    def keep(label: str, seconds: float) -> None:
        best[label] = min(seconds, best.get(label, float("inf")))

    for _ in range(repeats):
        start = time.perf_counter()
        ds = open_run(path)
        keep("open_run: all variables in RAM but depth_weights (lazy)", time.perf_counter() - start)
        t = time.perf_counter()
        n = ds.sizes["step"]
        ds["depth_weights"].isel(step=n // 2).load()
        ds["depth_weights"].isel(step=slice(n - n // 10, n)).mean("step").load()
        keep("depth_weights at one step + mean of the last 10 %", time.perf_counter() - t)
        keep("dashboard total (the two rows above)", time.perf_counter() - start)
    mb = ds["depth_weights"].nbytes / 1e6
    for _ in range(repeats):
        t = time.perf_counter()
        ds["depth_weights"].copy(deep=False).load()
        keep(f"depth_weights loaded in full ({mb:.0f} MB)", time.perf_counter() - t)
        t = time.perf_counter()
        open_run(path, lazy=False)
        keep("open_run(lazy=False): everything in RAM", time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--sublayers", type=int, default=96)
    parser.add_argument("--append-steps", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="scratch dir (default: a temp dir)")
    parser.add_argument("--save", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(dir=args.out, prefix="store_bench_"))
    try:
        per_step = bench_append(root, args.sublayers, args.append_steps, args.repeats)
        path = root / "long"
        t = time.perf_counter()
        write_long_run(path, args.sublayers, args.steps)
        write_s = time.perf_counter() - t
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        files = sum(1 for f in path.rglob("*") if f.is_file())
        reads = bench_read(path, args.repeats)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    lines = [
        f"store benchmark: {args.sublayers} sublayers x {SOURCES} sources, "
        f"{os.cpu_count()} CPUs, 1-minute load average {os.getloadavg()[0]:.1f} at the end",
        f"{'measurement':58s} {'value':>12s}  target",
    ]
    wall, cpu = per_step
    label = f"append: wall ms per recorded step (flush {FLUSH}, median of {args.repeats})"
    runs = ", ".join(f"{x:.3f}" for x in wall)
    lines.append(f"{label:58s} {statistics.median(wall):9.3f} ms  <= 0.5 ms  ({runs})")
    label = "append: CPU ms per recorded step (all threads)"
    lines.append(f"{label:58s} {statistics.median(cpu):9.3f} ms")
    lines.append(f"{f'write a {args.steps}-step run':58s} {write_s:10.1f} s")
    lines.append(f"{'  its size on disk / files':58s} {size / 1e6:9.0f} MB  {files} files")
    for label, seconds in reads.items():
        target = "  <= 2 s" if label.startswith("dashboard") else ""
        lines.append(f"{label:58s} {seconds:10.2f} s{target}")
    print("\n".join(lines))
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
