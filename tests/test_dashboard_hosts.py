"""DNS rebinding: the dashboard answers only requests that name it by its own address.

A page on evil.example whose DNS answer is switched to 127.0.0.1 reaches the dashboard's port
from the user's own browser, but every request it makes says ``Host: evil.example``; so does a
websocket it opens. A real `attnres-probe dashboard` process must refuse those and serve the
requests that name 127.0.0.1 or localhost.
"""

from __future__ import annotations

import base64
import os
import socket

import pytest

from attnres_probe.app.server import DashboardServer, allowed_host, allowed_request


@pytest.mark.parametrize(
    "host,bound,allowed",
    [
        ("127.0.0.1:8501", "127.0.0.1", True),
        ("localhost:8501", "127.0.0.1", True),
        ("LOCALHOST", "127.0.0.1", True),
        ("[::1]:8501", "127.0.0.1", True),
        ("10.1.2.3:8501", "0.0.0.0", True),  # an address: never a rebound name
        ("myhost.lan:8501", "myhost.lan", True),
        ("evil.example:8501", "127.0.0.1", False),
        ("evil.example", "0.0.0.0", False),
        ("localhost.evil.example:8501", "127.0.0.1", False),
        ("127.0.0.1.evil.example", "127.0.0.1", False),
        ("evil.example@127.0.0.1:8501", "127.0.0.1", False),
        ("127.0.0.1:8501/path", "127.0.0.1", False),
        ("127.0.0.1:port", "127.0.0.1", False),
        ("", "127.0.0.1", False),
    ],
)
def test_only_addresses_and_the_names_the_dashboard_is_bound_to_are_allowed(host, bound, allowed):
    assert allowed_host(host, bound) is allowed


def test_an_origin_must_name_the_same_host_as_the_request():
    here = "127.0.0.1:8501"
    assert allowed_request([here], [], "127.0.0.1")
    assert allowed_request([here], [f"http://{here}"], "127.0.0.1")
    assert not allowed_request([here], ["http://evil.example:8501"], "127.0.0.1")
    assert not allowed_request([here], ["null"], "127.0.0.1")
    assert not allowed_request([here, "evil.example"], [], "127.0.0.1")  # two Host headers
    assert not allowed_request([], [], "127.0.0.1")


def _status(port: int, request: str) -> str:
    """The status line the server answers a raw request with."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request.encode())
        return sock.recv(4096).decode("latin-1").split("\r\n", 1)[0]


def _websocket(port: int, host: str, origin: str | None) -> str:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET /_stcore/stream HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    return _status(port, "\r\n".join(lines) + "\r\n\r\n")


def _get(port: int, host: str, path: str) -> str:
    return _status(port, f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    log = tmp_path_factory.mktemp("logs") / "dashboard.log"
    with DashboardServer(root, log=log) as server:
        server.wait_ready()
        yield server.port


def test_a_websocket_naming_a_foreign_host_is_refused_and_the_dashboards_own_is_accepted(
    dashboard,
):
    port = dashboard
    for name in ("127.0.0.1", "localhost"):
        here = f"{name}:{port}"
        assert _websocket(port, here, f"http://{here}") == "HTTP/1.1 101 Switching Protocols"
    rebound = f"evil.example:{port}"
    assert _websocket(port, rebound, f"http://{rebound}") == "HTTP/1.1 403 Forbidden"
    assert _websocket(port, rebound, None) == "HTTP/1.1 403 Forbidden"
    here = f"127.0.0.1:{port}"
    assert _websocket(port, here, "http://evil.example") == "HTTP/1.1 403 Forbidden"


@pytest.mark.parametrize("path", ["/", "/_stcore/health", "/_stcore/host-config", "/dilution"])
def test_http_requests_naming_a_foreign_host_are_refused(dashboard, path):
    port = dashboard
    assert _get(port, f"127.0.0.1:{port}", path) == "HTTP/1.1 200 OK"
    assert _get(port, f"localhost:{port}", path) == "HTTP/1.1 200 OK"
    assert _get(port, f"evil.example:{port}", path) == "HTTP/1.1 403 Forbidden"
    assert _get(port, "evil.example", path) == "HTTP/1.1 403 Forbidden"


def test_a_streamlit_that_cannot_check_hosts_is_refused_in_one_line(monkeypatch, capsys):
    import streamlit

    from attnres_probe.app import server

    monkeypatch.delattr(streamlit, "App")
    with pytest.raises(SystemExit) as stopped:
        server.serve("127.0.0.1", 8501)
    assert stopped.value.code == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: Streamlit ") and line.endswith("pip install -U streamlit")
