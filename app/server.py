"""``attnres-probe dashboard ROOT`` as a subprocess on a free local port.

For programs that drive the dashboard from outside (browser tests, the memory benchmark, the
README screenshot)::

    with DashboardServer(root) as server:
        server.wait_ready()
        page.goto(server.url)

Leaving the ``with`` stops the command (which stops its Streamlit server) and then its whole
process group, whatever is left of it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO

HOST = "127.0.0.1"


def free_local_port() -> int:
    """A port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class DashboardServer:
    """The dashboard command over ``root`` on ``port`` (default: a free one); its output goes
    to ``log`` (a file path) or is discarded."""

    def __init__(self, root: str | os.PathLike, port: int | None = None, log: Path | None = None):
        self.root = Path(root)
        self.port = port or free_local_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log = log
        self.proc: subprocess.Popen | None = None
        self._out: IO | None = None

    def __enter__(self) -> DashboardServer:
        command = [sys.executable, "-m", "attnres_probe.cli", "dashboard", str(self.root)]
        self._out = open(self.log, "w") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*command, "--port", str(self.port), "--no-open"],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        return self

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Return once the server answers its health check; RuntimeError (with the log's
        tail) if the command ends or ``timeout_s`` passes first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the dashboard exited with status {self.proc.returncode}{self._log_tail()}"
                )
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=1) as reply:
                    if reply.read() == b"ok":
                        return
            time.sleep(0.1)
        raise RuntimeError(
            f"the dashboard did not answer within {timeout_s:.0f} s{self._log_tail()}"
        )

    def server_pid(self) -> int:
        """The Streamlit server's pid (the command runs it as its one child)."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        (pid,) = [int(c) for c in children.split()]
        return pid

    def __exit__(self, *exc) -> None:
        self.proc.terminate()  # the command stops its Streamlit server itself
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            if self._out not in (None, subprocess.DEVNULL):
                self._out.close()

    def _log_tail(self) -> str:
        if not self.log or not self.log.exists():
            return ""
        return ":\n" + self.log.read_text()[-2000:]
