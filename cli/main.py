"""The Typer application; each command lives in its own module and registers itself here."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(
    help="Depth dynamics of Attention-Residual and PreNorm transformers: train, record, show.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from attnres_probe import __version__

        typer.echo(f"attnres-probe {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """attnres-probe: record and show how signal and gradient move through depth."""


# Command modules register themselves on `app` when imported (one module per command).
from attnres_probe.cli import cmd_train  # noqa: E402,F401
from attnres_probe.cli import cmd_dashboard  # noqa: E402,F401
from attnres_probe.cli import cmd_export  # noqa: E402,F401
from attnres_probe.cli import cmd_info  # noqa: E402,F401
from attnres_probe.cli import cmd_prune  # noqa: E402,F401
from attnres_probe.cli import cmd_demo  # noqa: E402,F401
from attnres_probe.cli import cmd_claims  # noqa: E402,F401
