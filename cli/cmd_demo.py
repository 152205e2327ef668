"""``attnres-probe demo``: train a baseline and a Block AttnRes model, prune both, report."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from attnres_probe.cli.common import (
    command_name,
    err_console,
    library_errors,
    out_console,
    progress_bars,
    usage_errors,
    writable_folder,
)
from attnres_probe.cli.main import app


def _progress_bars(progress):
    """A DemoProgress that draws one rich bar per kind and stage on ``progress``."""
    from attnres_probe.tools.demo import DemoProgress

    class Bars(DemoProgress):
        def __init__(self) -> None:
            self.tasks: dict[tuple[str, str], int] = {}

        def _task(self, what: str, kind: str, total: int) -> int:
            key = (what, kind)
            if key not in self.tasks:
                self.tasks[key] = progress.add_task(f"{what} {kind}", total=total, info="")
            return self.tasks[key]

        def stage(self, text: str) -> None:
            if text in ("loading the corpus", "writing the report"):
                err_console.print(f"[dim]{text}…[/]", highlight=False)

        def train_step(self, kind: str, done: int, total: int, loss: float, tps: float) -> None:
            task = self._task("train", kind, total)
            progress.update(task, completed=done, info=f"loss {loss:.3f} · {tps:,.0f} tok/s")

        def prune_unit(self, kind: str, done: int, total: int, unit: str) -> None:
            task = self._task("prune", kind, total)
            progress.update(task, completed=done, info=unit)

    return Bars()


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the runs and report.html.")] = Path(
        "runs/demo"
    ),
    layers: Annotated[
        int | None, typer.Option(min=1, help="Transformer layers (default 16; 4 with --quick).")
    ] = None,
    d_model: Annotated[
        int | None, typer.Option("--d-model", min=2, help="Model width (default 64).")
    ] = None,
    n_blocks: Annotated[
        int | None, typer.Option("--n-blocks", min=1, help="Blocks of the block kind (default 8).")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(min=1, help="Training steps per model (default 300).")
    ] = None,
    kinds: Annotated[
        str, typer.Option(help="Comma-separated residual kinds to train.")
    ] = "baseline,block",
    data: Annotated[
        Path | None,
        typer.Option(help="Text file or folder; default: the Python standard library sources."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for weights and data order.")] = 0,
    quick: Annotated[bool, typer.Option("--quick", help="A sub-minute smoke version.")] = False,
    open_dashboard: Annotated[
        bool, typer.Option("--open", help="Start the dashboard on the runs afterwards.")
    ] = False,
    threads: Annotated[
        int | None,
        typer.Option(help="torch threads; default: 1 for small models, else the cores not busy."),
    ] = None,
) -> None:
    """Train a baseline and a Block AttnRes model of equal size with probes, prune both, and
    write an interactive report (report.html) with their headline numbers."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from attnres_probe.data import ByteCorpus
    from attnres_probe.tools.demo import DemoConfig, run_demo
    from attnres_probe.tools.report import headline_table

    given = {
        "out": str(out),
        "kinds": tuple(k.strip() for k in kinds.split(",") if k.strip()),
        "layers": layers,
        "d_model": d_model,
        "n_blocks": n_blocks,
        "steps": steps,
        "data": str(data) if data is not None else None,
        "seed": seed,
        "threads": threads,
    }
    given = {k: v for k, v in given.items() if v is not None}
    with usage_errors():  # every option first: exit 2, nothing read or made
        cfg = DemoConfig.from_options(quick, **given)
        cfg.check()
    writable_folder(out)
    with library_errors():  # a missing, empty, unreadable or short corpus fails before any work
        if data is None:
            err_console.print("[dim]loading the corpus…[/]", highlight=False)
        corpus = ByteCorpus.load(cfg.train.data)
        corpus.check_fits(cfg.train.seq_len)
    with library_errors():
        threads = cfg.pick_threads()
        cfg = replace(cfg, threads=threads.n)  # picked once: what is printed is what runs
        err_console.print(f"demo with {threads.describe()}", highlight=False)
        columns = (
            TextColumn("[bold]{task.description:<16}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
        )
        with progress_bars(*columns, describe=lambda fields: fields["info"]) as progress:
            result = run_demo(cfg, _progress_bars(progress), corpus=corpus)

    table = Table(title="headline numbers (last 10 % of recorded steps)", title_justify="left")
    table.add_column("")
    for name in result.summaries:
        table.add_column(name, justify="right")
    for label, cells in headline_table(result.summaries):
        table.add_row(label, *cells)
    out_console.print(table)
    took = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    for line in (
        f"report: {result.report}",
        f"took: {took}",
        "open the dashboard on these runs:",
        f"  {result.dashboard_command(command_name())}",
    ):
        out_console.print(line, highlight=False, soft_wrap=True, markup=False)
    if open_dashboard:
        from attnres_probe.cli.cmd_dashboard import dashboard

        dashboard(root=result.report.parent, port=None, host="127.0.0.1", open_browser=True)
