"""``attnres-probe prune``: remove each layer, sublayer or block of a run's checkpoint in turn."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from attnres_probe.cli.common import (
    fail,
    library_errors,
    out_console,
    progress_bars,
    torch_device,
)
from attnres_probe.cli.main import app


class Granularity(enum.StrEnum):
    layer = "layer"
    sublayer = "sublayer"
    block = "block"


class Removal(enum.StrEnum):
    mask = "mask"
    zero = "zero"


@app.command()
def prune(
    run: Annotated[Path, typer.Argument(help="Run directory holding a checkpoint.")],
    granularity: Annotated[
        Granularity,
        typer.Option(help="What to remove: each layer, sublayer or block (block runs)."),
    ] = Granularity.layer,
    batches: Annotated[int, typer.Option(min=1, help="Held-out batches per evaluation.")] = 8,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Default: the run's training value.")
    ] = None,
    seq_len: Annotated[
        int | None, typer.Option("--seq-len", min=2, help="Default: the run's training value.")
    ] = None,
    device: Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda.")] = "cpu",
    removal: Annotated[
        Removal | None,
        typer.Option(
            help="mask: the unit leaves every later depth softmax (AttnRes; their default). "
            "zero: its update is replaced by zeros (the only choice for a baseline)."
        ),
    ] = None,
) -> None:
    """Remove each unit of a checkpoint in turn; store and compare the held-out loss increase.
    Results of each granularity and removal are kept side by side in the run."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
    from rich.table import Table

    device = torch_device(device)
    if not run.exists():
        raise fail(f"run {run} does not exist; check the path")
    if not run.is_dir():
        raise fail(
            f"run {run} is a file, not a run directory; pass the folder holding its "
            "checkpoint.safetensors"
        )
    from attnres_probe.analysis.pruning import check_removal, run_residual
    from attnres_probe.analysis.select import AnalysisError

    residual = run_residual(run)
    if residual is not None:  # without a readable checkpoint, loading it says why below
        try:
            removal_value = check_removal(residual, removal.value if removal else None)
        except AnalysisError as err:
            raise fail(f"--removal: {err}", 2) from None
    else:
        removal_value = removal.value if removal else None
    with library_errors():
        from attnres_probe.analysis.pruning import compare_with_proxies, prune_run, save_results
        from attnres_probe.store import open_run

        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
        )
        bars = progress_bars(*columns, describe=lambda f: f["unit"], transient=True)
        with bars as progress:
            tasks: list[int] = []

            def on_unit(done: int, total: int, unit: str) -> None:
                if not tasks:  # the first unit: the checkpoint loaded, the work begins
                    tasks.append(
                        progress.add_task(f"prune {granularity.value}", total=total, unit="")
                    )
                progress.update(tasks[0], completed=done, total=total, unit=unit)

            results = prune_run(
                run,
                granularity.value,
                batches=batches,
                batch_size=batch_size,
                seq_len=seq_len,
                device=device,
                progress=on_unit,
                removal=removal_value,
                save=False,  # stored below, after the table: a run that cannot be written
            )  # still shows what was measured
        used = str(results.attrs["removal"])
        try:
            table_data = compare_with_proxies(
                open_run(run), granularity.value, removal=used, results=results
            )
        except AnalysisError:  # no recording to compare with: the measured losses alone
            table_data = results
    proxies = [p for p in ("block_influence", "relative_update") if p in table_data]
    table = Table(title=f"{run}: removing each {granularity.value} ({used} removal)")
    for col in ("unit", "loss", "increase", *proxies):
        table.add_column(col, justify="left" if col == "unit" else "right")
    for i, unit in enumerate(table_data["unit"].values):
        cells = [
            str(unit),
            f"{float(table_data['prune_loss'][i]):.4f}",
            f"{float(table_data['prune_loss_increase'][i]):+.4f}",
        ]
        cells += [f"{float(table_data[p][i]):.4g}" for p in proxies]
        table.add_row(*cells)
    out_console.print(table)
    base = float(results["prune_base_loss"])
    out_console.print(f"intact model: held-out loss {base:.4f}", highlight=False)
    for p in proxies:
        rho = table_data.attrs.get(f"spearman_{p}", float("nan"))
        shown = f"{rho:.3f}" if rho == rho else "undefined (needs 3 units with both values)"
        out_console.print(f"Spearman ρ({p}, increase) = {shown}", highlight=False)
    try:
        save_results(run, results)
    except (OSError, ValueError) as err:
        raise fail(
            f"the results above could not be stored in {run} ({err}); make the run writable "
            "and prune again to keep them"
        ) from None
