"""`attnres-probe dashboard` starts Streamlit on localhost over the given ROOT."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnres_probe.app import server
from attnres_probe.app.confine import ROOT_ENV
from attnres_probe.cli import app, cmd_dashboard

runner = CliRunner()


class FakeServer:
    """Stands in for the Streamlit subprocess: records how it was started."""

    started: list = []

    def __init__(self, cmd, env):
        FakeServer.started.append((cmd, env))

    def wait(self, timeout=None):
        return 0


@pytest.fixture
def fake_server(monkeypatch):
    FakeServer.started = []
    monkeypatch.setattr(cmd_dashboard.subprocess, "Popen", FakeServer)
    monkeypatch.setenv(ROOT_ENV, "/somewhere/else")
    return FakeServer.started


def test_dashboard_binds_localhost_headless_over_the_given_root(fake_server, tmp_path):
    result = runner.invoke(app, ["dashboard", str(tmp_path), "--port", "8765"])
    assert result.exit_code == 0, result.output
    ((cmd, env),) = fake_server
    assert cmd == [sys.executable, "-m", "attnres_probe.app.server", "127.0.0.1", "8765"]
    assert server.DASHBOARD.name == "dashboard.py" and server.DASHBOARD.is_file()
    assert (server.DASHBOARD.parent / "views" / "runs.py").is_file()
    config = server.streamlit_config("127.0.0.1", 8765)
    assert config["server.address"] == "127.0.0.1" and config["server.port"] == 8765
    assert config["server.headless"] is True
    assert config["browser.gatherUsageStats"] is False
    assert config["client.toolbarMode"] == "viewer"
    assert env[ROOT_ENV] == str(tmp_path.resolve())
    assert "http://127.0.0.1:8765" in result.stderr


def test_without_root_the_environment_root_is_dropped_for_the_bundled_samples(fake_server):
    result = runner.invoke(app, ["dashboard", "--port", "8766"])
    assert result.exit_code == 0, result.output
    ((_, env),) = fake_server
    assert ROOT_ENV not in env
    assert "bundled sample runs" in result.stderr


def test_another_host_is_passed_through_with_a_warning(fake_server, tmp_path):
    result = runner.invoke(app, ["dashboard", str(tmp_path), "--host", "0.0.0.0", "--port", "8767"])
    ((cmd, _),) = fake_server
    assert cmd[-2:] == ["0.0.0.0", "8767"]
    assert "warning" in result.stderr and "127.0.0.1" in result.stderr


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["/no/such/folder"], 1, "does not exist"),
        (["--port", "70000"], 2, "is not a port number"),
    ],
)
def test_bad_dashboard_input_is_one_line_and_no_server(fake_server, args, code, message):
    result = runner.invoke(app, ["dashboard", *args])
    assert result.exit_code == code
    assert message in result.stderr and "Traceback" not in result.output
    assert fake_server == []


def test_free_port_skips_a_port_in_use():
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        taken = busy.getsockname()[1]
        busy.listen()
        assert cmd_dashboard.free_port("127.0.0.1", start=taken, tries=5) != taken


def test_stopping_the_dashboard_command_stops_its_server(tmp_path):
    """SIGTERM to `attnres-probe dashboard` must not leave Streamlit serving as an orphan."""
    import os
    import signal
    import subprocess
    import time
    import urllib.request

    port = cmd_dashboard.free_port("127.0.0.1", start=20000 + os.getpid() % 20000)
    exe = Path(sys.executable).parent / "attnres-probe"
    proc = subprocess.Popen(
        [str(exe), "dashboard", str(tmp_path), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    health = f"http://127.0.0.1:{port}/_stcore/health"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(health, timeout=1) as reply:
                return reply.read() == b"ok"
        except OSError:
            return False

    try:
        deadline = time.monotonic() + 30
        while not healthy():
            assert proc.poll() is None and time.monotonic() < deadline, "server never came up"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert not healthy()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group
