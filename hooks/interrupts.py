"""Interrupted training ends in order: Ctrl-C and SIGTERM let the probe flush before exit.

Python turns Ctrl-C (SIGINT) into ``KeyboardInterrupt``, which unwinds through
``with probe(...)``: the probe flushes its buffered steps and marks the run interrupted.
SIGTERM's default action ends the process on the spot, losing the buffered steps. While a
probe (or ``attnres_probe.train.train``) is active in the main thread, and only where SIGTERM
still has its default action, SIGTERM raises ``SystemExit(143)`` instead — 128 + 15, the
status a shell reports for a process ended by SIGTERM. The stack unwinds as for Ctrl-C (every
``with`` and ``finally`` runs, the probe flushes), and the process then exits with status 143:
the signal is never swallowed. The previous handlers come back when the last holder leaves.

Either signal can land anywhere, also while a flush is on its way from the probe's buffer to
the store, where an exception would lose the rows in between. So the probe marks those stretches
with :data:`deferred`: a signal arriving inside one is held and raised as soon as it ends (a
second signal while one is held is raised at once, so a hanging flush stays interruptible). For
that, SIGINT's handler is replaced too while held, if it is Python's default one (raising
``KeyboardInterrupt`` exactly as before, just not in the middle of a flush). Handlers installed
by the program itself are left alone.

Outside the main thread (where Python runs no signal handlers) nothing is installed and
:data:`deferred` does nothing.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

__all__ = ["TERMINATED_STATUS", "deferred", "hold", "orderly_exit", "release"]

TERMINATED_STATUS = 128 + signal.SIGTERM  # exit status after SIGTERM ended a held run

# The handlers each signal must have for us to take it over: Python's own defaults.
_DEFAULTS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}


class _State:
    holders = 0  # active hold() calls (probes and train() in the main thread)
    replaced: dict[int, Any] = {}  # signal -> the handler ours replaced
    depth = 0  # nesting of deferred sections
    pending: int | None = None  # a signal that arrived inside a deferred section


def _exception(signum: int) -> BaseException:
    if signum == signal.SIGINT:
        return KeyboardInterrupt()
    return SystemExit(128 + signum)


def _handle(signum: int, frame: FrameType | None) -> None:
    if _State.depth > 0 and _State.pending is None:
        _State.pending = signum  # raised when the deferred section ends
        return
    # Outside a deferred section, or a second signal while one waits (a flush that hangs,
    # e.g. on a stalled network filesystem, can still be interrupted): raise now.
    _State.pending = None
    raise _exception(signum)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def hold() -> bool:
    """Take over SIGTERM (and SIGINT) where they have Python's default handlers, until the
    matching :func:`release`. False (nothing done, no release needed) outside the main thread."""
    if not _in_main_thread():
        return False
    if _State.holders == 0:
        for signum, default in _DEFAULTS.items():
            if signal.getsignal(signum) == default:
                signal.signal(signum, _handle)
                _State.replaced[signum] = default
    _State.holders += 1
    return True


def release() -> None:
    """End one :func:`hold`; the last one puts the replaced handlers back (unless the program
    has set handlers of its own meanwhile)."""
    _State.holders = max(0, _State.holders - 1)
    if _State.holders:
        return
    for signum, previous in _State.replaced.items():
        if signal.getsignal(signum) is _handle:
            signal.signal(signum, previous)
    _State.replaced.clear()


@contextlib.contextmanager
def orderly_exit() -> Iterator[None]:
    """:func:`hold` for the duration of a ``with`` block."""
    held = hold()
    try:
        yield
    finally:
        if held:
            release()


class _Deferred:
    """A stretch no held signal interrupts: one arriving inside is raised when it ends."""

    def __enter__(self) -> None:
        if _in_main_thread():
            _State.depth += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        if not _in_main_thread():
            return
        _State.depth -= 1
        if _State.depth == 0 and _State.pending is not None:
            signum, _State.pending = _State.pending, None
            raise _exception(signum)


deferred = _Deferred()
