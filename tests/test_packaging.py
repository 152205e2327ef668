"""A built wheel carries the library and its three faces under the attnres_probe namespace."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_hooks_cli_and_app_as_subpackages(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("attnres_probe-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "attnres_probe/__init__.py",
        "attnres_probe/ops.py",
        "attnres_probe/hooks/__init__.py",
        "attnres_probe/cli/__init__.py",
        "attnres_probe/cli/main.py",
        "attnres_probe/app/__init__.py",
        "attnres_probe/app/dashboard.py",
        "attnres_probe/app/confine.py",
        "attnres_probe/app/text.py",
        "attnres_probe/app/ui.py",
        "attnres_probe/app/tokens.py",
        "attnres_probe/app/views/runs.py",
        "attnres_probe/app/views/dilution.py",
        "attnres_probe/app/views/depth_attention.py",
        "attnres_probe/app/views/gradients.py",
        "attnres_probe/app/views/pruning.py",
        "attnres_probe/app/views/compare.py",
        "attnres_probe/cli/cmd_dashboard.py",
    ):
        assert required in names, f"{required} missing from {wheel.name}"
    assert not any(n.split("/")[0] in ("hooks", "cli", "app", "tests") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "attnres-probe = attnres_probe.cli:app" in text


def test_console_script_starts():
    exe = Path(sys.executable).parent / "attnres-probe"
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "train" in result.stdout
