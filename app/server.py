"""The dashboard's server process, and a handle on it for programs that drive it from outside.

``attnres-probe dashboard`` runs this module (``python -m attnres_probe.app.server HOST PORT``):
Streamlit serves ``dashboard.py`` as an ``st.App`` behind :class:`HostCheck`, which refuses
every request and websocket whose ``Host`` is not a name the dashboard answers to, or whose
``Origin`` is another site. That stops DNS rebinding: a web page whose own domain was re-pointed
at 127.0.0.1 reaches the port, but its requests name that domain in ``Host``.

For programs that drive the dashboard from outside (browser tests, the memory benchmark, the
README screenshot)::

    with DashboardServer(root) as server:
        server.wait_ready()
        page.goto(server.url)

Leaving the ``with`` stops the command (which stops its server) and then its whole process
group, whatever is left of it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Any

DASHBOARD = Path(__file__).resolve().parent / "dashboard.py"
WILDCARDS = ("0.0.0.0", "::", "")  # a bind to every interface


# ----------------------------------------------------------------------------- host check


def allowed_host(host: str, bound: str) -> bool:
    """Whether a request whose ``Host`` header is ``host`` (a name or an address, with or
    without a port) is for a dashboard bound to ``bound``: an IP address, ``localhost``, the
    bound name itself or, bound to every interface, this machine's own names. A page using DNS
    rebinding can send none of these: its ``Host`` is a name its owner's DNS answers for."""
    try:
        parts = urllib.parse.urlsplit(f"//{host}")
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        return False
    name = (parts.hostname or "").rstrip(".")
    if not name or parts.username is not None or parts.path or parts.query or parts.fragment:
        return False
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(name)
        return True
    names = {"localhost", bound.lower().strip("[]").rstrip(".")}
    if bound in WILDCARDS:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    return name in names


def allowed_request(hosts: list[str], origins: list[str], bound: str) -> bool:
    """Whether a request with these ``Host`` and ``Origin`` headers may be served: one allowed
    ``Host``, and an ``Origin``, when the browser sends one, of that same host and port."""
    if len(hosts) != 1 or len(origins) > 1 or not allowed_host(hosts[0], bound):
        return False
    if not origins:
        return True  # not sent on plain navigation; browsers send it cross-site
    return urllib.parse.urlsplit(origins[0]).netloc.lower() == hosts[0].lower()


class HostCheck:
    """ASGI middleware: a request or websocket that :func:`allowed_request` refuses gets
    403 Forbidden and never reaches Streamlit."""

    def __init__(self, app: Any, bound: str) -> None:
        self.app, self.bound = app, bound

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = [(k.lower(), v.decode("latin-1")) for k, v in scope.get("headers", [])]
            hosts = [v for k, v in headers if k == b"host"]
            origins = [v for k, v in headers if k == b"origin"]
            if not allowed_request(hosts, origins, self.bound):
                await self._refuse(scope, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope: dict, send: Any) -> None:
        if scope["type"] == "websocket":  # closed before the handshake: answered with 403
            await send({"type": "websocket.close", "code": 1008})
            return
        body = b"403 Forbidden: open the dashboard at the address it printed\n"
        headers = [(b"content-type", b"text/plain; charset=utf-8")]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 403, "headers": headers})
        await send({"type": "http.response.body", "body": body})


# ----------------------------------------------------------------------------- serving


def streamlit_config(host: str, port: int) -> dict[str, Any]:
    """The Streamlit settings the dashboard is served with."""
    return {
        "server.address": host,
        "server.port": port,
        "server.headless": True,
        "server.fileWatcherType": "none",
        "server.runOnSave": False,
        "browser.gatherUsageStats": False,
        "client.toolbarMode": "viewer",
    }


def serve(host: str, port: int) -> None:
    """Serve the dashboard on ``host``:``port`` behind :class:`HostCheck` until stopped."""
    import streamlit as st
    from starlette.middleware import Middleware

    app_class = getattr(st, "App", None)
    if app_class is None:
        sys.stderr.write(
            f"error: Streamlit {st.__version__} cannot check the Host of requests (it has no "
            "st.App), which keeps other web pages from reading your runs; pip install -U "
            "streamlit\n"
        )
        sys.exit(1)
    app = app_class(str(DASHBOARD), middleware=[Middleware(HostCheck, bound=host)])
    app.run(config=streamlit_config(host, port))


# ----------------------------------------------------------------------------- driving it

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


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
