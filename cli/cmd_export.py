"""``attnres-probe export``: figures of one or more runs to PNG, SVG, PDF, HTML or JSON files."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from attnres_probe.cli.common import (
    LazyProgress,
    err_console,
    fail,
    library_errors,
    out_console,
    writable_file,
    writable_folder,
)
from attnres_probe.cli.main import app


class FigureChoice(enum.StrEnum):
    # The names of attnres_probe.figures.FIGURES (spelled out so the CLI starts without
    # importing plotly; a test keeps the two equal), and "all".
    dilution = "dilution"
    layer_output = "layer-output"
    growth_over_training = "growth-over-training"
    relative_update = "relative-update"
    depth_heatmap = "depth-heatmap"
    depth_heatmap_by_kind = "depth-heatmap-by-kind"
    depth_entropy = "depth-entropy"
    mass_received = "mass-received"
    grad_depth = "grad-depth"
    layer_grad = "layer-grad"
    layer_param_grad = "layer-param-grad"
    excess_over_training = "excess-over-training"
    pruning = "pruning"
    loss = "loss"
    all = "all"


class FormatChoice(enum.StrEnum):
    png = "png"
    svg = "svg"
    pdf = "pdf"
    html = "html"
    json = "json"


FIGURE_NAMES = tuple(f.value for f in FigureChoice if f is not FigureChoice.all)
ALL_FIGURES = [FigureChoice.all]


def _one_file(names: list[str], out: Path | None) -> bool:
    """True when ``out`` names a single figure's file rather than a folder of figures."""
    return len(names) == 1 and out is not None and bool(out.suffix) and not out.is_dir()


def _targets(names: list[str], fmt: str, out: Path | None) -> dict[str, Path]:
    """Output path per figure: a file for one figure, a folder of <figure>.<fmt> for several."""
    if _one_file(names, out):
        return {names[0]: writable_file(out)}
    folder = writable_folder(out if out is not None else Path("figures"))
    return {n: folder / f"{n}.{fmt}" for n in names}


@app.command()
def export(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (or their .zarr stores).")],
    figure: Annotated[
        list[FigureChoice],
        typer.Option("--figure", "-f", help="Figure to draw; repeat for several, or 'all'."),
    ] = ALL_FIGURES,  # noqa: B006 (typer reads the default, never mutates it)
    fmt: Annotated[
        FormatChoice | None,
        typer.Option("--format", help="File format; default: from --out's suffix, else png."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="File for one figure; folder for several (default: figures/)."
        ),
    ] = None,
    step: Annotated[
        int | None,
        typer.Option(help="Draw profiles at this step; default: mean of the last 10 % of steps."),
    ] = None,
) -> None:
    """Draw figures of recorded runs (overlaid or side by side) and write them to files."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

    names = list(FIGURE_NAMES) if any(f.value == "all" for f in figure) else []
    names += [f.value for f in figure if f.value != "all" and f.value not in names]
    suffix = out.suffix.lstrip(".").lower() if out is not None and out.suffix else ""
    if fmt is None:
        fmt_value = suffix if suffix in {c.value for c in FormatChoice} else "png"
    else:
        fmt_value = fmt.value
        if len(names) == 1 and suffix and suffix != fmt_value:
            raise fail(
                f"--out {out} ends in .{suffix} but --format is {fmt_value}; make them agree", 2
            )

    _targets(names, fmt_value, out)  # an unwritable --out fails before any drawing
    with library_errors():
        from attnres_probe import figures
        from attnres_probe.analysis.select import AnalysisError
        from attnres_probe.store import open_run
        from attnres_probe.tools.export import write_figures

        datasets = [open_run(r) for r in runs]
        built = []
        for name in names:
            try:
                built.append((name, figures.make_figure(name, datasets, step=step)))
            except AnalysisError as err:
                if len(names) == 1:
                    raise
                err_console.print(f"skipped {name}: {err}", highlight=False, soft_wrap=True)
        if not built:
            raise fail("no figure could be drawn from these runs")
        targets = _targets([n for n, _ in built], fmt_value, out)
        items = [(fig, targets[n]) for n, fig in built]
        for fig, _ in items:
            n_heatmaps = sum(t.type == "heatmap" for t in fig.data)
            if n_heatmaps > 2 and fig.layout.width is None:
                fig.update_layout(width=480 * n_heatmaps + 160)
        columns = (TextColumn("[bold]export {task.description}"), BarColumn(), MofNCompleteColumn())
        with LazyProgress(*columns, console=err_console, transient=True) as progress:
            tasks: list[int] = []

            def on_written(done: int, total: int, path: Path) -> None:
                if not tasks:  # the first file is written: the exporter works
                    tasks.append(progress.add_task(fmt_value, total=total))
                progress.update(tasks[0], completed=done)

            written = write_figures(items, fmt_value, on_written)
    for path in written:
        out_console.print(str(path), highlight=False, soft_wrap=True)
