"""``attnres-probe dashboard``: serve the Streamlit dashboard over a folder of runs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Annotated

import typer

from attnres_probe.cli.common import command_name, err_console, fail
from attnres_probe.cli.main import app

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def cannot_bind(host: str, port: int) -> str | None:
    """Why a server could not listen on ``host``:``port`` now, or None when it could."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as err:
        return f"unknown address: {getattr(err, 'strerror', None) or err}"
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if os.name == "posix":  # as servers do: a port left in TIME_WAIT is free
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as err:
            return err.strerror or str(err)
    return None


def free_port(host: str, start: int = 8501, tries: int = 100) -> int:
    """The first port from ``start`` that ``host`` can bind now."""
    for port in range(start, start + tries):
        if cannot_bind(host, port) is None:
            return port
    raise OSError(f"no free port in {start}..{start + tries - 1} on {host}; pass --port")


def server_command(host: str, port: int) -> list[str]:
    """The dashboard's server process (:mod:`attnres_probe.app.server`): Streamlit behind a
    check of every request's Host and Origin."""
    return [sys.executable, "-m", "attnres_probe.app.server", host, str(port)]


def _open_when_ready(url: str, timeout_s: float = 60.0) -> None:
    import webbrowser

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.read().strip() == b"ok":
                    webbrowser.open(url)
                    return
        except OSError:
            time.sleep(0.3)


@app.command()
def dashboard(
    root: Annotated[
        Path | None,
        typer.Argument(help="Folder of runs to serve; default: the bundled sample_runs/."),
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to serve on; default: 8501 or the next free one.")
    ] = None,
    host: Annotated[
        str,
        typer.Option(help="Address to bind; anything but 127.0.0.1 exposes ROOT's runs."),
    ] = "127.0.0.1",
    open_browser: Annotated[
        bool, typer.Option("--open/--no-open", help="Open a browser tab once it is up.")
    ] = False,
) -> None:
    """Serve the dashboard: runs, dilution, depth attention, gradients, pruning, comparison."""
    import importlib.util

    from attnres_probe.app.confine import ROOT_ENV
    from attnres_probe.app.text import COMMAND_ENV

    if port is not None and not 1 <= port <= 65535:
        raise fail(f"--port {port} is not a port number (1..65535)", code=2)
    why = cannot_bind(host, 0)
    if why is not None:
        raise fail(f"--host {host} cannot be bound on this machine ({why}); use 127.0.0.1", 2)
    if root is not None and not root.exists():
        raise fail(f"ROOT {root} does not exist; pass a folder that holds runs")
    if root is not None and not root.is_dir():
        raise fail(f"ROOT {root} is a file, not a folder; pass the folder that holds the runs")
    if importlib.util.find_spec("streamlit") is None:
        raise fail("the dashboard needs Streamlit: pip install 'attnres-probe[app]'")
    if port is not None and (why := cannot_bind(host, port)) is not None:
        raise fail(f"port {port} on {host} is not free ({why}); pass another --port or none")
    try:
        port = port if port is not None else free_port(host)
    except OSError as err:
        raise fail(str(err)) from None

    env = dict(os.environ)
    env.pop(ROOT_ENV, None)
    if root is not None:
        env[ROOT_ENV] = str(root.resolve())
    env[COMMAND_ENV] = command_name()  # the pages' hints name the command as it was run
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{port}"
    where = root.resolve() if root is not None else "the bundled sample runs"
    err_console.print(f"dashboard over {where} at {url} (Ctrl-C stops it)", highlight=False)
    if host not in LOCAL_HOSTS:
        err_console.print(
            f"[yellow]warning:[/] binding to {host} lets other machines read every run under "
            "ROOT; use --host 127.0.0.1 to keep it local",
            highlight=False,
        )
    if open_browser:
        threading.Thread(target=_open_when_ready, args=(url,), daemon=True).start()

    proc = subprocess.Popen(server_command(host, port), env=env)
    code = serve_until_stopped(proc)
    if code:
        raise typer.Exit(code)


def serve_until_stopped(proc: subprocess.Popen) -> int:
    """Wait for the server; Ctrl-C, SIGTERM or SIGHUP stop it too (never left orphaned).
    Returns its exit code (0 when stopped by a signal)."""
    stopping = False

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True
        proc.terminate()

    handled = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {sig: signal.signal(sig, stop) for sig in handled}
    try:
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            stopping = True
            proc.terminate()
            code = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if stopping else code
