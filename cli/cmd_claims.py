"""``attnres-probe claims``: the paper's claims measured on a folder of runs, as a table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attnres_probe.cli.common import (
    command_name,
    err_console,
    fail,
    library_errors,
    out_console,
    writable_file,
)
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
    """Measure the paper's claims, as the paper states them, on every run under ROOT (output
    magnitude per layer, Block AttnRes's periodic pattern, the early-layer gradient excess,
    depth-attention entropy, Block vs Full), each with a verdict and every run's value; then
    diagnostics (gradient spread, mass received) and pruning."""
    from attnres_probe.tools.claims import claims_for_folder, marked_block, replace_marked

    # A README that cannot be used fails before the runs are measured.
    _check_readme("--update-readme", update_readme)
    _check_readme("--check-readme", check_readme)
    if update_readme is not None:
        writable_file(update_readme, "--update-readme")
    with library_errors():
        table = claims_for_folder(root)
        if update_readme is not None:
            text = update_readme.read_text(encoding="utf-8")
            update_readme.write_text(replace_marked(text, table), encoding="utf-8")
            err_console.print(f"wrote the claims table into {update_readme}", highlight=False)
        if check_readme is not None:
            if marked_block(check_readme.read_text(encoding="utf-8")) != table:
                raise fail(
                    f"the claims table in {check_readme} differs from the runs under {root}; "
                    f"regenerate it: {command_name()} claims {root} --update-readme {check_readme}"
                )
            err_console.print(f"{check_readme} matches the runs under {root}", highlight=False)
    if update_readme is not None or check_readme is not None:
        return
    if markdown:
        typer.echo(table, nl=False)
    else:
        from rich.markdown import Markdown

        out_console.print(Markdown(table))


def _check_readme(option: str, path: Path | None) -> None:
    """Fail unless ``path`` (when given) is a UTF-8 text file holding the claims markers."""
    from attnres_probe.tools.claims import marked_block

    if path is None:
        return
    if not path.is_file():
        raise fail(f"{option} {path} is not a file; pass the README holding the claims markers")
    try:
        marked_block(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise fail(f"{option} {path} is not UTF-8 text; pass the README") from None
    except OSError as err:
        raise fail(f"{option} {path} cannot be read: {err.strerror}") from None
    except ValueError as err:
        raise fail(f"{option} {path}: {err}; add both markers where the table belongs") from None
