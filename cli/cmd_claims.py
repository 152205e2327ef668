"""``attnres-probe claims``: the paper's claims measured on a folder of runs, as a table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attnres_probe.cli.common import err_console, fail, library_errors, out_console
from attnres_probe.cli.main import app


@app.command()
def claims(
    root: Annotated[Path, typer.Argument(help="Folder holding the runs.")] = Path("sample_runs"),
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the Markdown source instead of rendering it.")
    ] = False,
    update_readme: Annotated[
        Path | None,
        typer.Option(help="Write the table between the claims markers of this file."),
    ] = None,
    check_readme: Annotated[
        Path | None,
        typer.Option(help="Exit 1 unless this file's claims section equals the table."),
    ] = None,
) -> None:
    """Measure the paper's depth-dynamics claims on every run under ROOT (dilution, gradient
    spread, depth-attention entropy, held-out loss, pruning) with a verdict for each."""
    with library_errors():
        from attnres_probe.claims import claims_for_folder, marked_block, replace_marked

        table = claims_for_folder(root)
        if update_readme is not None:
            text = update_readme.read_text(encoding="utf-8")
            update_readme.write_text(replace_marked(text, table), encoding="utf-8")
            err_console.print(f"wrote the claims table into {update_readme}", highlight=False)
        if check_readme is not None:
            if marked_block(check_readme.read_text(encoding="utf-8")) != table:
                raise fail(
                    f"the claims table in {check_readme} differs from the runs under {root}; "
                    f"regenerate it: attnres-probe claims {root} --update-readme {check_readme}"
                )
            err_console.print(f"{check_readme} matches the runs under {root}", highlight=False)
    if update_readme is not None or check_readme is not None:
        return
    if markdown:
        typer.echo(table, nl=False)
    else:
        from rich.markdown import Markdown

        out_console.print(Markdown(table))
