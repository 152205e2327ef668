"""What every command shares: the consoles, and the errors the command group prints as one line
(see ``main.py``: usage errors exit 2, failures exit 1)."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import Progress, ProgressColumn, TaskID

from attnres_probe.resources import OptionError

try:  # recent Typer parses with its own copy of Click, older releases with the click package
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older Typer
    from click import exceptions as click_errors

# Progress and messages go to stderr; results (tables, paths) to stdout.
err_console = Console(stderr=True)
out_console = Console()


class LazyProgress(Progress):
    """Progress bars on stderr that draw nothing until the first task is added, so an error
    raised before any work starts leaves stderr with its one line."""

    def __enter__(self) -> LazyProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.live.is_started:  # a Progress stopped unstarted would still print a newline
            self.stop()

    def add_task(self, *args: Any, **kwargs: Any) -> TaskID:
        if not self.live.is_started:
            self.start()
        return super().add_task(*args, **kwargs)


class LineProgress:
    """Progress for a stderr that is not a terminal (a log file, a pipe, CI): one plain line per
    task every ``PERCENT`` per cent or ``INTERVAL_S`` seconds as the work goes, and one when it
    completes — never everything at the end, as live bars would. The same ``add_task`` /
    ``update`` calls as rich's Progress; ``describe(fields)`` words a task's extra fields."""

    PERCENT = 5
    INTERVAL_S = 10.0

    def __init__(self, describe: Callable[[dict[str, Any]], str] | None = None) -> None:
        self._describe = describe
        self._tasks: list[dict[str, Any]] = []

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        task = {"description": description, "total": total, "completed": 0, "fields": fields}
        task.update(shown=-1, at=time.monotonic())
        self._tasks.append(task)
        return len(self._tasks) - 1

    def update(
        self, task_id: int, completed: float | None = None, total: float | None = None, **fields
    ) -> None:
        task = self._tasks[task_id]
        if total is not None:
            task["total"] = total
        if completed is not None:
            task["completed"] = completed
        task["fields"].update(fields)
        total, done = task["total"], task["completed"]
        share = int(100 * done / total) // self.PERCENT if total else 0
        finished = bool(total) and done >= total
        now = time.monotonic()
        if share > task["shown"] or finished or now - task["at"] >= self.INTERVAL_S:
            if finished and task["shown"] == 101:
                return  # the completion line is printed once
            task["shown"] = 101 if finished else share
            task["at"] = now
            self._print(task)

    def _print(self, task: dict[str, Any]) -> None:
        total, done = task["total"], task["completed"]
        text = f"{task['description']}: {done:g}" + (f"/{total:g}" if total else "")
        if total:
            text += f" ({100 * done / total:.0f} %)"
        if self._describe is not None:
            words = self._describe(task["fields"])
            text += f" {words}" if words else ""
        err_console.print(text, highlight=False, markup=False, soft_wrap=True)


def progress_bars(
    *columns: str | ProgressColumn,
    describe: Callable[[dict[str, Any]], str] | None = None,
    transient: bool = False,
) -> LazyProgress | LineProgress:
    """Progress on stderr: live bars on a terminal, plain lines as the work goes elsewhere."""
    if err_console.is_terminal:
        return LazyProgress(*columns, console=err_console, transient=transient)
    return LineProgress(describe)


class Failure(click_errors.ClickException):
    """A path that cannot be used or an operation that failed: exit 1, printed as one line."""

    exit_code = 1


class BadOption(click_errors.UsageError):
    """A bad option value whose message already names the option and the fix: exit 2."""


def fail(message: str, code: int = 1) -> click_errors.ClickException:
    """The error to raise for ``message``: a failure (exit 1) or, with ``code=2``, a usage
    error (a bad option value; the message names the option and the fix); the command group
    prints it as ``error: message``."""
    if code == 2:
        return BadOption(message)
    return Failure(message)


def _from_library(err: BaseException) -> bool:
    return any(cls.__module__.startswith("attnres_probe.") for cls in type(err).__mro__)


@contextlib.contextmanager
def library_errors() -> Iterator[None]:
    """Turn the library's expected errors (bad data, missing or unusable paths, I/O) into
    one clear line and exit code 1; an option the model or machine cannot take is exit 2."""
    try:
        yield
    except (click_errors.ClickException, typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except OptionError as err:  # a size or setting the model or machine cannot take: exit 2
        raise fail(str(err), 2) from None
    except (ValueError, OSError) as err:
        raise fail(_as_run(str(err) or type(err).__name__)) from None
    except Exception as err:
        if _from_library(err):
            raise fail(_as_run(str(err) or type(err).__name__)) from None
        raise


def _as_run(message: str) -> str:
    """A library message whose suggested commands (```attnres-probe …```) name the command
    line as the user runs it."""
    return message.replace(f"`{PROGRAM} ", f"`{command_name()} ")


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """Turn a configuration's refusal of option values (a ValueError naming the field, the
    value and what would be valid) into a usage error: exit 2."""
    try:
        yield
    except OptionError as err:  # it names the option and the fix itself
        raise BadOption(str(err)) from None
    except ValueError as err:
        # It names the configuration's field, not the option: Click adds the command, and the
        # line points at its --help.
        raise click_errors.UsageError(str(err)) from None


def _unwritable(folder: Path) -> str | None:
    """Why ``folder`` (to write in, created if missing) cannot be written, or None."""
    part = folder
    while not part.exists() and part.parent != part:
        part = part.parent
    if not part.is_dir():
        return f"{part} is a file"
    if not os.access(part, os.W_OK | os.X_OK):
        return f"{part} is not writable"
    return None


def writable_folder(path: Path, option: str = "--out") -> Path:
    """``path`` when it is (or can be made) a writable folder; otherwise a failure, raised
    before any work starts. Nothing is created here."""
    if path.exists() and not path.is_dir():
        raise fail(f"{option} {path} is a file; pass a folder (it is created if missing)")
    why = _unwritable(path)
    if why is not None:
        raise fail(f"{option} {path} cannot be written: {why}; pass a folder you can write to")
    return path


def writable_file(path: Path, option: str = "--out") -> Path:
    """``path`` when it can be written as a file (its folder exists or can be made)."""
    if path.is_dir():
        raise fail(f"{option} {path} is a folder; pass a file path")
    why = _unwritable(path.parent)
    if why is None and path.exists() and not os.access(path, os.W_OK):
        why = f"{path} is read-only"
    if why is not None:
        raise fail(f"{option} {path} cannot be written: {why}; pass a path you can write to")
    return path


PROGRAM = "attnres-probe"


def command_name(argv0: str | None = None) -> str:
    """The command line as the user runs it, for the commands it suggests: ``attnres-probe``
    when that is what the shell finds, else the path typed (``.venv/bin/attnres-probe``), or
    ``python -m attnres_probe.cli``."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    name = os.path.basename(argv0)
    if os.path.exists(argv0) and os.path.samefile(argv0, Path(__file__).parent / "__main__.py"):
        python = os.path.basename(sys.executable)
        same = shutil.which(python) and os.path.samefile(shutil.which(python), sys.executable)
        return f"{python if same else _shown_path(sys.executable)} -m attnres_probe.cli"
    if name != PROGRAM or os.sep not in argv0:
        return PROGRAM
    found = shutil.which(PROGRAM)
    if found and os.path.exists(argv0) and os.path.samefile(found, argv0):
        return PROGRAM
    return _shown_path(argv0)


def _shown_path(path: str) -> str:
    """``path`` relative to the working directory when below it, else absolute."""
    full = os.path.abspath(path)
    rel = os.path.relpath(full)
    return rel if not rel.startswith("..") else full


def torch_device(name: str) -> str:
    """``name`` when torch knows the device, a model can run on it and this machine has it: a
    usage error (exit 2) for a name that is no usable device (``gpu0``, ``meta``, ``cpu:7``),
    a failure (exit 1) for a device missing here."""
    from attnres_probe.devices import DeviceMissingError, usable_device
    from attnres_probe.resources import OptionError

    try:
        usable_device(name)
    except OptionError as err:
        raise fail(str(err), 2) from None
    except DeviceMissingError as err:
        raise fail(str(err)) from None
    return name
