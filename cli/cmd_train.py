"""``attnres-probe train``: train one model on a corpus and record it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attnres_probe.cli.common import (
    err_console,
    library_errors,
    out_console,
    progress_bars,
    torch_device,
    usage_errors,
    writable_folder,
)
from attnres_probe.cli.main import app


@app.command()
def train(
    residual: Annotated[
        str,
        typer.Option(
            metavar="baseline|full|block",
            help="Residual kind: PreNorm baseline, Full AttnRes or Block AttnRes.",
        ),
    ] = "baseline",
    layers: Annotated[int, typer.Option(help="Transformer layers (2 sublayers each).")] = 16,
    d_model: Annotated[int, typer.Option("--d-model", help="Model width.")] = 64,
    n_heads: Annotated[int, typer.Option("--n-heads", help="Attention heads.")] = 4,
    n_blocks: Annotated[int, typer.Option("--n-blocks", help="Blocks (block kind only).")] = 8,
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 300,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Sequences per step.")] = 8,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Bytes per sequence.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 3e-3,
    seed: Annotated[int, typer.Option(help="Seed for weights and data order.")] = 0,
    data: Annotated[
        Path | None,
        typer.Option(help="Text file or folder; default: the Python standard library sources."),
    ] = None,
    every: Annotated[int, typer.Option(help="Record every N-th step (0: no recording).")] = 1,
    out: Annotated[
        Path | None,
        typer.Option(help="Run directory; default: runs/RESIDUAL-sSEED (e.g. runs/block-s0)."),
    ] = None,
    device: Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda.")] = "cpu",
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace a run already in --out (moved aside first, deleted once the new run "
            "is complete). A run another process is recording is never replaced.",
        ),
    ] = False,
    threads: Annotated[
        int | None,
        typer.Option(
            help="torch threads; default: 1 for small models, else the cores not busy.",
        ),
    ] = None,
) -> None:
    """Train a byte-level model on a corpus, recording its depth dynamics into a run directory."""
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

    from attnres_probe.data import ByteCorpus
    from attnres_probe.footprint import default_threads
    from attnres_probe.models import ModelConfig
    from attnres_probe.resources import Threads, check_threads
    from attnres_probe.train import TrainConfig, check_run_dir, check_training
    from attnres_probe.train import train as run_training

    with usage_errors():  # every option first: exit 2, nothing read or made
        model_cfg = ModelConfig(
            residual=residual,
            n_layers=layers,
            d_model=d_model,
            n_heads=n_heads,
            n_blocks=n_blocks,
            max_seq_len=max(seq_len, 64),
        )
        train_cfg = TrainConfig(
            steps=steps,
            batch_size=batch_size,
            seq_len=seq_len,
            lr=lr,
            seed=seed,
            data=str(data) if data is not None else None,
            record_every=every,
        )
        check_threads(threads)
        check_training(model_cfg, train_cfg)
    device = torch_device(device)
    run_dir = writable_folder(out or Path("runs") / f"{residual}-s{seed}")
    with library_errors():
        check_run_dir(run_dir, overwrite)
        corpus = ByteCorpus.load(train_cfg.data)
        corpus.check_fits(seq_len)
        picked = default_threads(model_cfg, batch_size, seq_len)
        if threads is not None:
            picked = Threads(threads, "--threads")
        err_console.print(f"training with {picked.describe()}", highlight=False, soft_wrap=True)
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]:.3f}"),
            TextColumn("{task.fields[tps]:,.0f} tok/s"),
            TimeElapsedColumn(),
        )

        def words(fields: dict) -> str:
            return f"loss {fields['loss']:.3f} · {fields['tps']:,.0f} tok/s"

        def replaced(aside: Path) -> None:
            err_console.print(
                f"moved the old run aside to {aside} (deleted when this run is complete)",
                highlight=False,
                soft_wrap=True,
            )

        with progress_bars(*columns, describe=words) as progress:
            task = progress.add_task(f"train {residual}", total=steps, loss=float("nan"), tps=0.0)

            def on_step(step: int, loss: float, tokens_per_s: float) -> None:
                progress.update(task, completed=step + 1, loss=loss, tps=tokens_per_s)

            result = run_training(
                model_cfg,
                train_cfg,
                run_dir,
                on_step=on_step,
                device=device,
                corpus=corpus,
                overwrite=overwrite,
                threads=picked.n,
                on_replace=replaced,
            )
    out_console.print(
        f"{run_dir}: {steps} steps in {result.seconds:.1f} s ({result.steps_per_s:.2f} steps/s), "
        f"final train loss {result.losses[-1]:.4f}, held-out loss {result.held_out_loss:.4f}",
        highlight=False,
    )
