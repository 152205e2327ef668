"""What every command shares: the stderr console, and library errors turned into one line."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console

# Progress and messages go to stderr; results (tables, paths) to stdout.
err_console = Console(stderr=True)
out_console = Console()


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` to stderr and return the Exit to raise (1 failure, 2 usage)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextlib.contextmanager
def library_errors() -> Iterator[None]:
    """Turn the library's expected errors into one clear line and exit code 1."""
    try:
        yield
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, OSError) as err:
        raise fail(str(err).replace("[", r"\[")) from None
