"""Remake ``sample_runs/``: baseline, Full and Block AttnRes recordings of equal size.

    .venv/bin/python scripts/make_sample_runs.py [--out sample_runs] [--jobs 2] [--only block-s1]

Each run is trained by the project's training loop with the probe attached (recording every
4 steps), then pruned on 32 held-out batches — each layer and (Block AttnRes) each block alone
for every run, each sublayer alone for seed 0 of each kind, with every removal the kind has
(mask and zero for AttnRes, zero for the baseline) — and given its greedy pruning path. Per run
this is the same as

    attnres-probe train --residual KIND --layers 32 --d-model 64 --n-heads 4 --n-blocks 8 \
        --steps 1000 --batch-size 8 --seq-len 64 --lr 3e-3 --seed SEED --every 4 \
        --threads 1 --overwrite --out RUN
    attnres-probe prune RUN --batches 32 --granularity G --removal R   # each G and R above
    python -c "from attnres_probe.tools.prune_path import prune_path; prune_path('RUN')"

with one torch thread per run (``--threads 1``, also the default for this model size) so
``--jobs`` runs share the cores evenly. To keep the folder small, only the seed-0 run of each
kind keeps its weights, stored in bfloat16 after pruning (which used the float32 weights); the
other seeds keep their recording with every pruning result in it. Timings, the machine and
every setting go to ``OUT/manifest.json``; ``OUT/README.md`` is written from it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

MODEL = {"n_layers": 32, "d_model": 64, "n_heads": 4, "n_blocks": 8, "max_seq_len": 64}
# Every 4 steps: 250 recorded steps fill one 256-step store chunk, which is written whole
# however few steps it holds, so the finer record costs no disk.
TRAIN = {"steps": 1000, "batch_size": 8, "seq_len": 64, "lr": 3e-3, "record_every": 4}
PRUNE_BATCHES = 32
SUBLAYER_SEEDS = (0,)  # seeds pruned sublayer by sublayer too
WEIGHT_SEEDS = (0,)  # seeds whose checkpoint is kept (the others: recording only)
WEIGHT_DTYPE = "bfloat16"  # the kept weights, stored after pruning (which used float32)
THREADS = 1  # torch threads per run: --jobs runs share the cores
RUNS = [("baseline", s) for s in (0, 1, 2)] + [("full", 0)] + [("block", s) for s in (0, 1, 2)]
# Relative cost of one run (training and pruning), to start the longest first.
COST = {"full": 3.0, "block": 2.0, "baseline": 1.0}


@dataclass
class Made:
    name: str
    kind: str
    seed: int
    train_s: float
    prune_s: float
    pruned: list[str]
    held_out_loss: float
    prune_base_loss: float
    command: str


def run_name(kind: str, seed: int) -> str:
    return f"{kind}-s{seed}"


def cli_command(kind: str, seed: int, out: Path) -> str:
    m, t = MODEL, TRAIN
    return (
        f"attnres-probe train --residual {kind} --layers {m['n_layers']} "
        f"--d-model {m['d_model']} --n-heads {m['n_heads']} --n-blocks {m['n_blocks']} "
        f"--steps {t['steps']} --batch-size {t['batch_size']} --seq-len {t['seq_len']} "
        f"--lr {t['lr']:g} --seed {seed} --every {t['record_every']} --threads {THREADS} "
        f"--overwrite --out {out / run_name(kind, seed)}"
    )


def prune_plan(kind: str, seed: int) -> list[tuple[str, str]]:
    """(granularity, removal) of every pruning measurement of a run, the default removal's
    layer results last (the greedy path ranks by them)."""
    from attnres_probe.analysis.pruning import REMOVALS, default_removal

    granularities = ["layer"] + (["block"] if kind == "block" else [])
    if seed in SUBLAYER_SEEDS:
        granularities.append("sublayer")
    removals = [r for r in REMOVALS if kind != "baseline" or r == "zero"]
    plan = [(g, r) for g in granularities for r in removals]
    first = ("layer", default_removal(kind))
    return [p for p in plan if p != first] + [first]


def store_checkpoint_as(run_dir: Path, dtype: str) -> None:
    """Rewrite the run's checkpoint with its floating-point weights in ``dtype`` (same
    recording, a new checksum)."""
    import torch

    from attnres_probe.checkpoint import RECORDING_ID, load_checkpoint, save_checkpoint

    state, config = load_checkpoint(run_dir)
    cast = {
        k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v for k, v in state.items()
    }
    extra = {**config.get("extra", {}), "checkpoint_dtype": dtype}
    save_checkpoint(run_dir, cast, config["model"], extra, config.get(RECORDING_ID))


def drop_checkpoint(run_dir: Path) -> None:
    """Remove the run's weights and their configuration (its recording stays whole)."""
    from attnres_probe.checkpoint import CHECKPOINT_FILE, CONFIG_FILE

    for name in (CHECKPOINT_FILE, CONFIG_FILE):
        (run_dir / name).unlink(missing_ok=True)


def make_run(kind: str, seed: int, out: str, steps: int) -> Made:
    """Train, prune and path one run into ``out/<kind>-s<seed>`` (in a worker process)."""
    from attnres_probe.analysis.pruning import prune_run
    from attnres_probe.footprint import torch_threads
    from attnres_probe.models import ModelConfig
    from attnres_probe.tools.prune_path import prune_path
    from attnres_probe.train import TrainConfig, train

    TRAIN["steps"] = steps
    run_dir = Path(out) / run_name(kind, seed)
    with torch_threads(THREADS):  # training and pruning alike
        start = time.perf_counter()
        result = train(
            ModelConfig(residual=kind, **MODEL),
            TrainConfig(seed=seed, **TRAIN),
            run_dir,
            overwrite=True,
            threads=THREADS,
        )
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        plan = prune_plan(kind, seed)
        for g, r in plan:
            last = prune_run(run_dir, g, batches=PRUNE_BATCHES, removal=r)
        prune_path(run_dir)
        prune_s = time.perf_counter() - start
    if seed in WEIGHT_SEEDS:
        store_checkpoint_as(run_dir, WEIGHT_DTYPE)
    else:
        drop_checkpoint(run_dir)
    return Made(
        name=run_name(kind, seed),
        kind=kind,
        seed=seed,
        train_s=round(train_s, 1),
        prune_s=round(prune_s, 1),
        pruned=[f"{g}/{r}" for g, r in plan],
        held_out_loss=round(result.held_out_loss, 4),
        prune_base_loss=round(float(last["prune_base_loss"]), 4),
        command=cli_command(kind, seed, Path(out)),
    )


def machine() -> dict:
    import torch

    from attnres_probe.resources import cpu_name

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def write_readme(out: Path, manifest: dict) -> None:
    rows = "\n".join(
        f"| `{r['name']}` | {r['kind']} | {r['seed']} | {r['train_s']:.0f} s | "
        f"{r['prune_s']:.0f} s | {', '.join(r.get('pruned', []))} | {r['prune_base_loss']:.4f} |"
        for r in manifest["runs"]
    )
    commands = "\n".join(r["command"] for r in manifest["runs"])
    m, t, mach = manifest["model"], manifest["train"], manifest["machine"]
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    seeds = ", ".join(str(s) for s in manifest.get("weights_kept_for_seeds", [0]))
    text = f"""# Sample runs

Real recordings made by this project's own training loop (`attnres_probe.train.train`) with
the probe attached, so the dashboard (`attnres-probe dashboard`) and `attnres-probe export`
show something on first start. The claims table in the top-level README is computed from
these runs by `attnres-probe claims sample_runs --markdown`.

All seven share one size and one training recipe; they differ in the residual kind and seed:
{m["n_layers"]} layers ({2 * m["n_layers"]} sublayers), d_model {m["d_model"]},
{m["n_heads"]} heads, SwiGLU MLP, RoPE; Block AttnRes with {m["n_blocks"]} blocks of
{2 * m["n_layers"] // m["n_blocks"]} sublayers. Byte-level language modelling on the default
corpus (the Python standard library's `.py` sources, read at run time), {t["steps"]} AdamW
steps of {t["batch_size"]} × {t["seq_len"]} bytes, peak lr {t["lr"]:g} (warm-up, cosine decay),
recorded every {t["record_every"]} steps. Each run directory holds the recording
(`recording.zarr`, with every pruning result); the seed-{seeds} runs also hold their final
weights (`checkpoint.safetensors` with `config.json`), which `attnres-probe prune` and the
dashboard's per-token view need, stored in {manifest.get("checkpoint_dtype", "float32")}
after pruning (which used the float32 weights: pruning them again gives slightly different
losses). The other seeds' weights are not kept, to keep the folder small.

## How they were made

```bash
.venv/bin/python scripts/make_sample_runs.py --out sample_runs --jobs {manifest["jobs"]}
```

Per run that is exactly:

```bash
{commands}
# then, for each RUN and each granularity/removal in its row of the table below:
attnres-probe prune RUN --batches {manifest["prune_batches"]} --granularity G --removal R
python -c "from attnres_probe.tools.prune_path import prune_path; prune_path('RUN')"
```

Pruning removes each unit alone on {manifest["prune_batches"]} held-out batches (the same
batches for every run): `mask` takes the removed source out of every later depth softmax
(AttnRes), `zero` replaces its update by zeros (the baseline has only this). The greedy path
removes the cheapest 1, 2, … layers together with the run's default removal. The held-out
loss in the table is the intact model's on those {manifest["prune_batches"]} batches.

Machine: {mach["cpu"]}, {mach["cores"]} cores, {mach["os"]}, Python {mach["python"]},
torch {mach["torch"]}; {manifest["jobs"]} runs at a time, one torch thread each. Wall time for
all runs: {manifest["wall_s"] / 60:.1f} min. Folder size: {size / 2**20:.1f} MiB.

| run | kind | seed | training | pruning | pruned (granularity/removal) | held-out loss |
|---|---|---|---|---|---|---|
{rows}

Training is deterministic for a seed on a given machine; another CPU or thread count gives
slightly different numbers.
"""
    (out / "README.md").write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("sample_runs"))
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at the same time")
    parser.add_argument("--only", nargs="*", help="remake only these runs (e.g. block-s1)")
    parser.add_argument("--steps", type=int, help="override the steps (to check the script)")
    parser.add_argument(
        "--readme-only", action="store_true", help="rewrite OUT/README.md from OUT/manifest.json"
    )
    args = parser.parse_args()
    if args.readme_only:
        write_readme(args.out, json.loads((args.out / "manifest.json").read_text()))
        return
    if args.steps:
        TRAIN["steps"] = args.steps
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    todo = [(k, s) for k, s in RUNS if not args.only or run_name(k, s) in args.only]
    todo.sort(key=lambda run: -COST[run[0]])  # the longest first, so the jobs end together
    manifest_path = out / "manifest.json"
    old = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    made = {r["name"]: r for r in old.get("runs", [])}

    def write_manifest(wall: float) -> None:
        manifest = {
            "model": MODEL,
            "train": TRAIN,
            "prune_batches": PRUNE_BATCHES,
            "weights_kept_for_seeds": list(WEIGHT_SEEDS),
            "checkpoint_dtype": WEIGHT_DTYPE,
            "jobs": args.jobs,
            "wall_s": round(wall + old.get("wall_s", 0.0) if args.only else wall, 1),
            "machine": machine(),
            "runs": [made[run_name(k, s)] for k, s in RUNS if run_name(k, s) in made],
        }
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
        write_readme(out, manifest)

    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            pool.submit(make_run, k, s, str(out), TRAIN["steps"]): run_name(k, s) for k, s in todo
        }
        for future in as_completed(futures):
            result = future.result()
            made[result.name] = asdict(result)
            print(
                f"{result.name}: trained in {result.train_s:.0f} s, pruned in "
                f"{result.prune_s:.0f} s, held-out loss {result.prune_base_loss:.4f}",
                flush=True,
            )
            write_manifest(time.perf_counter() - start)  # an interrupted script loses no run
    wall = time.perf_counter() - start
    print(f"wrote {len(todo)} runs into {out} in {wall / 60:.1f} min", file=sys.stderr)


if __name__ == "__main__":
    main()
