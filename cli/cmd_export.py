"""``attnres-probe export``: figures of one or more runs to image, HTML or JSON files."""

from __future__ import annotations

import enum
import os
import textwrap
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
from attnres_probe.tools.export import FORMATS, ExportError, check_format, same_format


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
    grad_map = "grad-map"
    update_map = "update-map"
    pruning = "pruning"
    prune_path = "prune-path"
    loss = "loss"
    all = "all"


class SeedChoice(enum.StrEnum):
    band = "band"
    each = "each"


FIGURE_NAMES = tuple(f.value for f in FigureChoice if f is not FigureChoice.all)
ALL_FIGURES = [FigureChoice.all]
DEFAULT_FOLDER = "figures"


def _checked_format(value: str, option: str) -> str:
    try:
        return check_format(value)
    except ExportError as err:
        raise fail(f"{option}: {err}", 2) from None


def plan_targets(
    names: list[str], out: str | None, fmt: str | None
) -> tuple[str, Path | None, Path | None]:
    """(format, one file, folder) for ``names`` written to ``out``: exactly one of file and
    folder is set. ``out`` ending in a slash, an existing folder or a name without a suffix is
    a folder of ``<figure>.<format>`` files; any other name is one figure's file, whose suffix
    gives the format unless ``fmt`` does (they must agree). Usage errors exit 2, unusable
    paths 1; nothing is created."""
    fmt = _checked_format(fmt, "--format") if fmt else None
    raw = out if out is not None else DEFAULT_FOLDER
    path = Path(raw)
    is_folder = raw.endswith(("/", os.sep)) or path.is_dir() or not path.suffix
    if is_folder:
        return fmt or "png", None, writable_folder(path)
    if len(names) > 1:
        if path.exists():
            writable_folder(path)  # says that it is a file
        raise fail(
            f"--out {raw} names one file but {len(names)} figures are drawn; pass a folder "
            f"(--out {path.with_suffix('')}/) or one --figure",
            2,
        )
    suffix = _checked_format(path.suffix, f"--out {raw}")
    if fmt is not None and not same_format(fmt, suffix):
        raise fail(f"--out {raw} ends in {path.suffix} but --format is {fmt}; make them agree", 2)
    return fmt or suffix, writable_file(path), None


def _figure_list() -> str:
    """The figure names for the help's epilog, kept whole: Click would break lines at hyphens."""
    lines = textwrap.wrap(", ".join(f.value for f in FigureChoice), 76, break_on_hyphens=False)
    return "Figures: \n\n\b\n" + "\n".join(lines)


@app.command(epilog=_figure_list())
def export(
    runs: Annotated[
        list[Path],
        typer.Argument(metavar="RUN", help="Run directories (or their .zarr stores)."),
    ],
    figure: Annotated[
        list[FigureChoice],
        typer.Option(
            "--figure",
            "-f",
            metavar="FIGURE",
            help="Figure to draw (the names are listed below); repeat for several.",
        ),
    ] = ALL_FIGURES,  # noqa: B006 (typer reads the default, never mutates it)
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            metavar="|".join(FORMATS),
            help="File format; default: --out's suffix, else png.",
        ),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            "-o",
            metavar="PATH",
            help="A file for one figure (its suffix gives the format), or a folder (ends in / "
            f"or has no suffix) of FIGURE.FORMAT files; default: {DEFAULT_FOLDER}/.",
        ),
    ] = None,
    step: Annotated[
        int | None,
        typer.Option(
            help="Draw profiles at the recorded step nearest this one; default: the mean of the "
            "last 10 % of recorded steps."
        ),
    ] = None,
    width: Annotated[
        int | None, typer.Option(min=100, max=10000, help="Width in CSS pixels.")
    ] = None,
    height: Annotated[
        int | None, typer.Option(min=100, max=10000, help="Height in CSS pixels.")
    ] = None,
    scale: Annotated[
        float,
        typer.Option(min=0.1, max=10.0, help="Pixel density of PNG/JPEG/WebP (2: twice sharper)."),
    ] = 1.0,
    seeds: Annotated[
        SeedChoice,
        typer.Option(
            help="Runs that differ only in seed: their mean and range (band), or each run."
        ),
    ] = SeedChoice.band,
    self_contained: Annotated[
        bool,
        typer.Option(
            "--self-contained",
            help="Inline plotly.js into each HTML file instead of one plotly.min.js beside them.",
        ),
    ] = False,
) -> None:
    """Draw figures of recorded runs (overlaid or side by side) and write them to files."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

    names = list(FIGURE_NAMES) if any(f.value == "all" for f in figure) else []
    names += [f.value for f in figure if f.value != "all" and f.value not in names]
    fmt_value, one_file, folder = plan_targets(names, out, fmt)
    with library_errors():
        from attnres_probe import figures
        from attnres_probe.analysis.select import AnalysisError
        from attnres_probe.store import open_run
        from attnres_probe.tools.export import write_figures

        datasets = [open_run(r) for r in runs]
        built = []
        for name in names:
            try:
                built.append(
                    (name, figures.make_figure(name, datasets, step=step, seeds=seeds.value))
                )
            except AnalysisError as err:
                if len(names) == 1:
                    raise
                err_console.print(f"skipped {name}: {err}", highlight=False, soft_wrap=True)
        if not built:
            raise fail("no figure could be drawn from these runs")
        items = [
            (fig, one_file if one_file is not None else folder / f"{name}.{fmt_value}")
            for name, fig in built
        ]
        columns = (TextColumn("[bold]export {task.description}"), BarColumn(), MofNCompleteColumn())
        # A bar on a terminal only: a redirected stderr would get its last frame as a stray line.
        with LazyProgress(*columns, console=err_console, transient=True) as progress:
            tasks: list[int] = []

            def on_written(done: int, total: int, path: Path) -> None:
                if not err_console.is_terminal:
                    return
                if not tasks:  # the first file is written: the exporter works
                    tasks.append(progress.add_task(fmt_value, total=total))
                progress.update(tasks[0], completed=done)

            written = write_figures(
                items,
                fmt_value,
                on_written,
                size=(width, height),
                scale=scale,
                self_contained=self_contained,
            )
    for path in written:
        out_console.print(str(path), highlight=False, soft_wrap=True)
