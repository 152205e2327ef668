"""The Typer application; each command lives in its own module and registers itself here.

Errors reach the user as one line on stderr, ``error: <what went wrong and how to fix it>``,
never a usage block or a traceback:

- exit 2, usage errors, found before anything is read or written: an unknown command or
  option, a missing argument, a value of the wrong type, out of range or not among the
  choices, option values a configuration refuses. A message that does not name the fix
  itself ends in ``see 'attnres-probe <command> --help'``.
- exit 1, failures: a path that does not exist, is not a run or cannot be written (paths are
  never checked by Typer, so this holds for arguments and options alike), and an operation
  that failed (the library's errors, turned into their message by the commands).

An unexpected exception (a bug) is one line too, naming how to see its traceback.

The commands import the library (torch, xarray, plotly, zarr) inside their functions, not at
the top of their modules: every command module is imported to build ``--help`` and to check
options, and those must answer in a fraction of a second, before any heavy import.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from attnres_probe.cli.common import BadOption, click_errors, command_name

TRACEBACK_ENV = "ATTNRES_PROBE_TRACEBACK"


def error_line(message: str) -> None:
    """Print ``error: message`` as one line on stderr (red when stderr is a terminal)."""
    text = " ".join(message.split())
    typer.echo(f"{typer.style('error:', fg='red', bold=True)} {text}", err=True)


def usage_message(err: click_errors.UsageError) -> str:
    """Click's usage error as one sentence naming where the options are listed."""
    message = err.format_message().replace("Value error, ", "").strip().rstrip(".")
    if message[:1].isupper() and not message[1:2].isupper():
        message = message[0].lower() + message[1:]
    if err.ctx is not None and not isinstance(err, BadOption):
        message += f"; see '{err.ctx.command_path} --help'"
    return message


class OneLineErrors(TyperGroup):
    """The command group: every error it lets through is printed by :func:`error_line`."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        # Usage lines and "see '… --help'" name the command as it was run.
        kwargs.setdefault("prog_name", command_name())
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except click_errors.NoArgsIsHelpError as err:
            typer.echo(err.ctx.get_help())  # a bare command asks for its help, not an error line
            sys.exit(2)
        except click_errors.UsageError as err:
            error_line(usage_message(err))
            sys.exit(err.exit_code)
        except click_errors.ClickException as err:
            error_line(err.format_message())
            sys.exit(err.exit_code)
        except typer.Abort:
            error_line("aborted")
            sys.exit(1)
        except Exception as err:  # noqa: BLE001 - a bug still reaches the user as one line
            if os.environ.get(TRACEBACK_ENV):
                raise
            error_line(
                f"unexpected {type(err).__name__}: {err} (a bug: rerun with "
                f"{TRACEBACK_ENV}=1 for the traceback and report it)"
            )
            sys.exit(1)
        # Without standalone mode Click returns the exit code of a typer.Exit, else None.
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    help="Depth dynamics of Attention-Residual and PreNorm transformers: train, record, show.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Click's plain help: flags without a type, choices never broken inside a word.
    rich_markup_mode=None,
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


# Each command module registers itself on `app` when imported; --help lists them in this order.
COMMANDS = ("train", "dashboard", "export", "info", "prune", "demo", "claims")
for _name in COMMANDS:
    importlib.import_module(f"attnres_probe.cli.cmd_{_name}")
