"""The GPU check script, run here as a dry run on the CPU so that it cannot rot unnoticed."""

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
STAGES = [
    "install",
    "parity",
    "kernels",
    "train_step_eager",
    "probe_overhead",
    "train_step_compiled",
    "kernels_compile",
]
OUT_FILES = {
    "summary.md",
    "gpu_check.json",
    "logs.tar.gz",
    "kernels.md",
    "kernels_compile.md",
    "probe_overhead.md",
    "train_step.md",
}


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_check():
    yield _load("gpu_check_script", ROOT / "scripts" / "gpu_check.py")
    del sys.modules["gpu_check_script"]


def _script(*args: str, env: dict | None = None, timeout: float = 600):
    env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    env.pop("OUT", None)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check-out")
    done = _script("--dry-run", "--out", str(out))
    return done, out


def test_dry_run_runs_every_stage_on_the_cpu_and_says_its_timings_mean_nothing(dry_run):
    done, out = dry_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((out / "gpu_check.json").read_text())
    assert data["dry_run"] is True
    assert [s["name"] for s in data["stages"]] == STAGES
    assert {s["name"]: s["status"] for s in data["stages"]} == dict.fromkeys(STAGES, "ok")
    parity = next(s for s in data["stages"] if s["name"] == "parity")["details"]
    assert parity["passed"] > 0 and parity["failed"] == parity["errors"] == 0
    for name in ("summary.md", "kernels.md", "probe_overhead.md", "train_step.md"):
        assert "DRY RUN" in (out / name).read_text(), name


def test_dry_run_prints_the_stage_table_last_and_writes_at_most_eight_files(dry_run):
    done, out = dry_run
    files = {p.name for p in out.iterdir()}
    assert files == OUT_FILES  # the GPU machine sends back at most 8 files
    tail = done.stdout.strip().splitlines()
    table = [line for line in tail if line.startswith("| ")]
    assert table[0].startswith("| stage | status |")
    assert [row.split("|")[1].strip() for row in table[1 : 1 + len(STAGES)]] == STAGES
    assert tail[-1].startswith("|")  # the reply of a GPU call carries the end of the output
    summary = (out / "summary.md").read_text()
    assert "| parity | ok |" in summary and "passed, 0 failed" in summary


def test_dry_run_packs_every_stage_log_and_the_raw_results(dry_run):
    _, out = dry_run
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {f"{stage}.log" for stage in STAGES} <= names
    assert {"parity.xml", "train_step_eager.json", "train_step_compiled.json"} <= names
    step = (out / "train_step.md").read_text()
    assert "| eager | block+stats |" in step and "| compiled | baseline |" in step


def test_a_stage_past_its_time_box_is_killed_with_its_children(gpu_check, tmp_path):
    check = gpu_check.Check(gpu_check.parse(["--dry-run", "--out", str(tmp_path)]))
    child = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(child)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(120)\n"
    )
    start = time.monotonic()
    rc, seconds, log = check.run("sleeper", [sys.executable, "-c", code], box=3)
    assert rc is None and seconds < 30 and time.monotonic() - start < 30
    assert "killed after 3 s" in log.read_text()
    pid = int(child.read_text())
    for _ in range(50):  # the grandchild went with its group
        if not Path(f"/proc/{pid}").exists() or "Z" in _state(pid):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the stage's child {pid} still runs")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "Z"


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "no output folder: pass --out DIR"),
        (["--out", "x", "--only", "parity,bogus"], "unknown stage 'bogus'"),
        (["--out", "x", "--budget", "5"], "--budget 5 leaves no stage time"),
    ],
)
def test_usage_errors_exit_2_and_name_the_fix(args, message):
    done = _script(*args, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the check would run")
def test_without_cuda_and_without_dry_run_it_says_so_and_fails(tmp_path):
    done = _script("--out", str(tmp_path), timeout=120)
    assert done.returncode == 1
    assert "error: torch.cuda.is_available() is False" in done.stderr
    assert "--dry-run" in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the opt-in works")
def test_asking_for_the_kernel_tests_on_cuda_without_a_gpu_names_the_fix():
    env = {**os.environ, "ATTNRES_PROBE_TEST_DEVICE": "cuda"}
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_kernels_rms_norm.py", "-k", "gradcheck"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert "ATTNRES_PROBE_TEST_DEVICE='cuda'" in done.stdout + done.stderr
    assert "unset it" in done.stdout + done.stderr


def test_train_step_rejects_an_unknown_variant_before_any_work(capsys):
    module = _load("train_step_benchmark", ROOT / "benchmarks" / "train_step.py")
    try:
        with pytest.raises(SystemExit) as exit_info:
            module.parse(["--variants", "baseline,block+probe"])
    finally:
        del sys.modules["train_step_benchmark"]
    assert exit_info.value.code == 2
    assert "'block+probe' is not a variant" in capsys.readouterr().err
