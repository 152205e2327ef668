"""The GPU check in one call: kernel parity on CUDA, the kernel benchmark, probe overhead and the
training step, each stage time-boxed, everything written under one folder.

    bash scripts/gpu_check.sh                      # on a CUDA machine; writes to $OUT or --out
    bash scripts/gpu_check.sh --dry-run --out DIR  # the same stages on the CPU, toy sizes

Stages, in this order (most important first; each runs as its own process group, killed with
its children when it runs past its time box or past the whole budget, so a hang in one still
leaves the others' results):

  install              the project's dependencies the machine lacks, from the wheels
                       scripts/gpu_wheels.sh put in .gpu-wheels/ (pip resolves against what is
                       installed), then the project itself with --no-deps, then flash-attn-res
                       if a wheel of it was carried
  parity               the kernel parity tests (PARITY_FILES) natively on CUDA:
                       ATTNRES_PROBE_TEST_DEVICE=cuda, no interpreter
  kernels              benchmarks/kernels.py --quick --no-step --no-compile
  train_step_eager     benchmarks/train_step.py, 32 layers, baseline / block / block+stats, eager
  probe_overhead       benchmarks/probe_overhead.py --device cuda (every=1 and every=10, 3 kinds)
  train_step_compiled  the same training step under torch.compile
  kernels_compile      benchmarks/kernels.py --quick --no-step --no-sweep, with torch.compile

The output folder gets at most 8 files (what the GPU machine sends back): summary.md (the
table printed last), gpu_check.json (every stage's status, time and parsed results),
kernels.md, kernels_compile.md, probe_overhead.md, train_step.md, and logs.tar.gz (every
stage's log and raw output). They are rewritten after every stage.

``--dry-run`` runs the same stages on the CPU: the Triton interpreter, toy sizes, a subset of
the parity tests, pip in --dry-run mode; its timings mean nothing and every table says so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARITY_FILES = (
    "tests/test_kernels_rms_norm.py",
    "tests/test_kernels_attnres.py",
    "tests/test_kernels_block_attnres.py",
    "tests/test_kernels_dispatch.py",
    "tests/test_kernels_model.py",
    "tests/test_attnres_op.py",
)
# A fast subset for the dry run: each kernel's parity test at its first shape, float32.
DRY_RUN_PARITY = "matches_reference_forward_and_gradients and (shape0 or case0) and dtype0"
STAGES = (
    "install",
    "parity",
    "kernels",
    "train_step_eager",
    "probe_overhead",
    "train_step_compiled",
    "kernels_compile",
)
# The longest each stage may run (seconds), before the whole budget cuts it shorter.
BOXES = {
    "install": 90,
    "parity": 180,
    "kernels": 120,
    "train_step_eager": 90,
    "probe_overhead": 90,
    "train_step_compiled": 180,
    "kernels_compile": 150,
}
RESERVE_S = 8  # kept back from the budget for the summary
MIN_STAGE_S = 15  # a stage with less time than this left is skipped
# The 32-layer step: the model of benchmarks/kernels.py's training step.
STEP_SHAPE = "--layers 32 --d-model 1024 --heads 8 --blocks 8 --batch 8 --seq 1024 --autocast bf16"
STEP_VARIANTS = "baseline,block,block+stats"
PROBE_SHAPE = "--layers 16 --d-model 512 --heads 8 --blocks 8 --batch 16 --seq 128 --rounds 6"
PROBE_DRY = "--layers 2 --d-model 32 --heads 2 --blocks 2 --batch 2 --seq 8 --rounds 1 --chunk 1"


@dataclass
class StageResult:
    name: str
    status: str = "not run"  # ok, failed, timed out, skipped
    seconds: float = 0.0
    returncode: int | None = None
    summary: str = ""  # one line for the table
    details: dict = field(default_factory=dict)
    log: str = ""  # the log file, relative to the work folder


class Check:
    """Runs the stages one after another inside one budget; writes the output folder."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.dry = args.dry_run
        self.out: Path = args.out
        self.work = Path(tempfile.mkdtemp(prefix="attnres-gpu-check-"))
        self.started = time.monotonic()
        self.deadline = self.started + args.budget
        self.results: list[StageResult] = []
        self.header: dict = {}
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.env.pop("TRITON_INTERPRET", None)  # each stage says where its kernels run
        if self.dry:
            self.env["TRITON_INTERPRET"] = "1"
            self.env.setdefault("OMP_NUM_THREADS", "1")
        self.python = sys.executable

    # -- running a stage

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, argv: list[str], env: dict | None = None, box: float = 0) -> tuple:
        """Run ``argv`` in its own process group with its output in ``<name>.log``; kill the
        group past ``box`` seconds. Returns (returncode or None when killed, seconds, log)."""
        log = self.work / f"{name}.log"
        with log.open("a") as f:
            f.write(f"$ {' '.join(argv)}\n")
            f.flush()
            start = time.monotonic()
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env or self.env,
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                rc = proc.wait(timeout=max(1.0, box))
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                rc = None
                f.write(f"\n[gpu_check] killed after {box:.0f} s (its time box)\n")
        return rc, time.monotonic() - start, log

    def stage(self, name: str, body: Callable[[StageResult, float], None]) -> None:
        result = StageResult(name, log=f"{name}.log")
        self.results.append(result)
        selected = not self.args.only or name in self.args.only
        box = min(BOXES[name] * self.args.box_scale, self.time_left() - RESERVE_S)
        if not selected:
            result.status, result.summary = "skipped", "not selected (--only)"
        elif box < MIN_STAGE_S:
            result.status, result.summary = "skipped", f"out of time ({box:.0f} s left)"
        else:
            print(f"[gpu_check] {name}: up to {box:.0f} s", flush=True)
            start = time.monotonic()
            try:
                body(result, box)
            except Exception as err:  # a broken stage must not stop the others
                result.status = "failed"
                result.summary = f"{type(err).__name__}: {err}"[:200]
            result.seconds = time.monotonic() - start
            if result.status == "failed":
                tail = _tail(self.work / result.log, 15)
                print(f"[gpu_check] {name} failed; log tail:\n{tail}", flush=True)
            print(f"[gpu_check] {name}: {result.status} in {result.seconds:.0f} s", flush=True)
        self.write()

    def finish(self, result: StageResult, rc: int | None, box: float) -> bool:
        result.returncode = rc
        if rc is None:
            result.status = "timed out"
            result.summary = f"killed after {box:.0f} s"
        elif rc != 0:
            result.status = "failed"
            result.summary = f"exit status {rc}"
        else:
            result.status = "ok"
        return rc == 0

    # -- stages

    def install(self, result: StageResult, box: float) -> None:
        wheels = self.args.wheels
        carried = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
        far = [w for w in carried if w.name.startswith("flash_attn_res")]
        ours = [str(w) for w in carried if w not in far]
        pip = [
            self.python,
            "-m",
            "pip",
            "install",
            "--no-index",
            "--no-cache-dir",
            "--disable-pip-version-check",
        ]
        if self.dry:
            pip.append("--dry-run")
        links = ["--find-links", str(wheels)] if carried else []
        deadline = time.monotonic() + box

        def run(argv: list[str]) -> int | None:
            return self.run("install", argv, box=max(1.0, deadline - time.monotonic()))[0]

        # What the environment lacks of the project's dependencies: pip resolves them against
        # what is installed and takes only the missing ones from the carried wheels.
        rc = run([*pip, *links, *project_requirements()])
        site, how = None, "into the running environment"
        if rc not in (0, None) and ours and not self.dry:
            # The environment refused (read-only, a conflict): every carried wheel into a
            # folder of its own, first on the path of every later stage.
            site = self.work / "site"
            rc = run([*pip, "--no-deps", "--target", str(site), *ours])
            self.env["PYTHONPATH"] = os.pathsep.join(
                [str(site), *filter(None, [self.env.get("PYTHONPATH")])]
            )
            how = f"into {site} on PYTHONPATH (the environment refused)"
        target = ["--target", str(site)] if site else []
        if rc == 0 and not self.dry:  # the project itself, without its dependencies
            rc = run([*pip, "--no-deps", "--no-build-isolation", *(target or ["-e"]), "."])
        if rc == 0 and far:  # optional: kernels.py reports whether it imports
            run([*pip, "--no-deps", *target, str(far[0])])
        if rc == 0:  # what the later stages import
            probe = (
                "import attnres_probe.hooks, attnres_probe.cli, zarr, plotly, xarray, typer; "
                "import importlib.metadata as m; print({d: m.version(d) for d in "
                "('attnres-probe', 'zarr', 'numcodecs', 'plotly', 'xarray', 'typer')})"
            )
            rc = run([self.python, "-c", probe])
        self.finish(result, rc, box)
        result.details = {"wheels": [w.name for w in carried], "how": how}
        if rc != 0 and not carried:
            result.summary += (
                f"; no wheels in {wheels}: run scripts/gpu_wheels.sh first and carry the folder"
            )
        if rc == 0:
            names = ", ".join(w.name.split("-")[0] for w in carried) or "none"
            mode = "pip --dry-run; " if self.dry else ""
            result.summary = f"{mode}{len(carried)} wheels carried ({names}); {how}"

    def parity(self, result: StageResult, box: float) -> None:
        junit = self.work / "parity.xml"
        argv = [
            self.python,
            "-m",
            "pytest",
            "-q",
            "-rfE",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
            *PARITY_FILES,
        ]
        env = dict(self.env)
        if self.dry:
            argv += ["-k", self.args.parity_k or DRY_RUN_PARITY]
        else:
            env["ATTNRES_PROBE_TEST_DEVICE"] = "cuda"
            env.pop("TRITON_INTERPRET", None)
            if self.args.parity_k:
                argv += ["-k", self.args.parity_k]
            if _importable("xdist"):  # compiling the kernels is the slow part: 8 workers
                argv += ["-n", "8"]
            if _importable("pytest_timeout"):
                argv += ["--timeout", "120"]
        rc, _, _ = self.run("parity", argv, env=env, box=box)
        self.finish(result, rc, box)
        counts = junit_counts(junit)
        result.details = counts
        if counts:
            where = "interpreter, CPU" if self.dry else "native CUDA"
            line = (
                f"{counts['passed']} passed, {counts['failed']} failed, "
                f"{counts['errors']} errors, {counts['skipped']} skipped ({where})"
            )
            if counts["failures"]:
                line += "; failing: " + ", ".join(counts["failures"][:4])
            result.summary = line if rc is not None else f"{line}; {result.summary}"

    def kernels(self, result: StageResult, box: float, compiled: bool = False) -> None:
        name = "kernels_compile" if compiled else "kernels"
        folder = self.work / name
        argv = [self.python, "benchmarks/kernels.py", "--quick", "--no-step", "--out", str(folder)]
        argv += ["--no-sweep"] if compiled else ["--no-compile"]
        if self.dry:  # the ops the summary reads; one op for the second run
            argv += [
                "--dry-run",
                "--no-sweep",
                "--ops",
                "rms_norm" if compiled else "attnres,block",
            ]
        rc, _, _ = self.run(name, argv, box=box)
        self.finish(result, rc, box)
        tables = sorted(folder.glob("*.md"))
        if tables:
            shutil.copy(tables[0], self.out / f"{name}.md")
        data = sorted(folder.glob("*.json"))
        if data:
            result.details = summarize_kernels(json.loads(data[0].read_text()))
            if result.details.get("line"):
                result.summary = (result.details["line"] + "; " + result.summary).strip("; ")

    def train_step(self, result: StageResult, box: float, mode: str) -> None:
        name = f"train_step_{mode}"
        md, js = self.work / f"{name}.md", self.work / f"{name}.json"
        # The rounds stop at a third of the box: the warm-up (compiling) takes the rest.
        argv = [
            self.python,
            "benchmarks/train_step.py",
            "--modes",
            mode,
            "--variants",
            STEP_VARIANTS,
            "--out",
            str(md),
            "--json",
            str(js),
            "--budget",
            f"{box / 3:.0f}",
        ]
        if self.dry:  # dynamo alone, on the baseline alone when compiling: tracing is slow
            argv += ["--dry-run", "--backend", "eager"]
            argv[argv.index(STEP_VARIANTS)] = "baseline" if mode == "compiled" else STEP_VARIANTS
        else:
            argv += ["--device", "cuda", *STEP_SHAPE.split()]
        rc, _, _ = self.run(name, argv, box=box)
        self.finish(result, rc, box)
        parts = [
            self.work / f"train_step_{m}.md"
            for m in ("eager", "compiled")
            if (self.work / f"train_step_{m}.md").exists()
        ]
        if parts:
            text = "\n".join(p.read_text() for p in parts)
            (self.out / "train_step.md").write_text(text)
        if js.exists():
            result.details = summarize_train_step(json.loads(js.read_text()))
            result.summary = (result.details["line"] + "; " + result.summary).strip("; ")

    def probe_overhead(self, result: StageResult, box: float) -> None:
        argv = [self.python, "benchmarks/probe_overhead.py"]
        shape = PROBE_DRY if self.dry else PROBE_SHAPE
        argv += ["--device", "cpu" if self.dry else "cuda", *shape.split()]
        rc, _, log = self.run("probe_overhead", argv, box=box)
        self.finish(result, rc, box)
        rows = parse_probe_table(log.read_text())
        table = [line for line in log.read_text().splitlines() if line.startswith("|")]
        if table:
            head = "# Probe overhead\n\n" + (
                "**DRY RUN: timings meaningless**\n\n" if self.dry else ""
            )
            (self.out / "probe_overhead.md").write_text(
                head + f"`{' '.join(argv[1:])}`\n\n" + "\n".join(table) + "\n"
            )
        result.details = {"rows": rows}
        line = "; ".join(
            f"every={every}: "
            + " ".join(f"{r['kind']} {r['ratio']:.3f}×" for r in rows if r["every"] == every)
            for every in (1, 10)
            if any(r["every"] == every for r in rows)
        )
        result.summary = (line + "; " + result.summary).strip("; ")

    # -- the whole check

    def main(self) -> int:
        self.header = describe_machine(self.python, self.dry, self.args.budget)
        self.write()
        print(
            f"[gpu_check] {self.header['device']} · torch {self.header['torch']} · "
            f"triton {self.header['triton']} · budget {self.args.budget:.0f} s · work "
            f"{self.work} · out {self.out}",
            flush=True,
        )
        if not self.dry and not self.header["cuda_available"]:
            print(
                "error: torch.cuda.is_available() is False on this machine; run the check on "
                "a CUDA GPU, or pass --dry-run to run its stages on the CPU",
                file=sys.stderr,
            )
            return 1
        bodies = {
            "install": self.install,
            "parity": self.parity,
            "kernels": self.kernels,
            "train_step_eager": lambda r, b: self.train_step(r, b, "eager"),
            "probe_overhead": self.probe_overhead,
            "train_step_compiled": lambda r, b: self.train_step(r, b, "compiled"),
            "kernels_compile": lambda r, b: self.kernels(r, b, compiled=True),
        }
        for name in STAGES:
            self.stage(name, bodies[name])
        print(self.summary(), flush=True)
        shutil.rmtree(self.work, ignore_errors=True)
        return 0 if all(r.status in ("ok", "skipped") for r in self.results) else 1

    def summary(self) -> str:
        h = self.header
        elapsed = time.monotonic() - self.started
        lines = [
            "# GPU check"
            + (" — DRY RUN: CPU, interpreter, toy sizes, timings meaningless" if self.dry else ""),
            "",
            f"{h['date']} · {h['device']} · driver {h['driver']} · torch {h['torch']} (CUDA "
            f"{h['cuda']}) · triton {h['triton']} · python {h['python']} · commit {h['commit']}"
            f" · {elapsed:.0f} s of a {self.args.budget:.0f} s budget",
            "",
            "| stage | status | s | result |",
            "|---|---|---:|---|",
        ]
        for r in self.results:
            lines.append(f"| {r.name} | {r.status} | {r.seconds:.0f} | {r.summary} |")
        targets = check_targets(self.results, self.dry)
        if targets:
            lines += ["", "| target | measured | met |", "|---|---|---|"]
            lines += [f"| {t} | {m} | {ok} |" for t, m, ok in targets]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        """The output folder as it stands: summary, JSON, the logs packed in one file."""
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "summary.md").write_text(self.summary())
        data = {
            "header": self.header,
            "dry_run": self.dry,
            "stages": [asdict(r) for r in self.results],
            "targets": check_targets(self.results, self.dry),
        }
        (self.out / "gpu_check.json").write_text(json.dumps(data, indent=1) + "\n")

        def logs_only(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
            """Leave out site/, the wheels a fallback install unpacked."""
            return None if info.name.split("/")[1:2] == ["site"] else info

        with tarfile.open(self.out / "logs.tar.gz", "w:gz") as tar:
            tar.add(self.work, arcname="gpu_check", filter=logs_only)


# ----------------------------------------------------------------------------- helpers


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop a stage's process group: SIGTERM, then SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, n: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def project_requirements() -> list[str]:
    """The project's own dependencies, as pyproject.toml states them (no extras)."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def _command(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def describe_machine(python: str, dry: bool, budget: float) -> dict:
    """Device, driver and versions, read in a child process (this one never imports torch)."""
    probe = (
        "import json, torch, importlib.metadata as m\n"
        "def v(d):\n"
        "    try: return m.version(d)\n"
        "    except m.PackageNotFoundError: return 'not installed'\n"
        "cuda = torch.cuda.is_available()\n"
        "p = torch.cuda.get_device_properties(0) if cuda else None\n"
        "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda,"
        " 'cuda_available': cuda, 'triton': v('triton'), 'flash-attn-res': v('flash-attn-res'),"
        " 'gpu': p.name if p else None, 'sm': f'{p.major}{p.minor}' if p else None,"
        " 'gpu_memory_gib': round(p.total_memory / 2**30) if p else None,"
        " 'multiprocessors': p.multi_processor_count if p else None}))\n"
    )
    printed = _command([python, "-c", probe]).splitlines()
    versions = json.loads(printed[-1]) if printed else {}
    smi = _command(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    )
    driver = smi.split(",")[1].strip() if smi.count(",") >= 2 else "none"
    gpu = versions.get("gpu")
    device = f"{gpu} (sm_{versions['sm']}, {versions['gpu_memory_gib']} GiB)" if gpu else "cpu"
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": device if not dry else f"{device} (dry run)",
        "driver": driver,
        "nvidia_smi": smi,
        "torch": versions.get("torch"),
        "cuda": versions.get("cuda"),
        "cuda_available": bool(versions.get("cuda_available")),
        "triton": versions.get("triton"),
        "flash-attn-res": versions.get("flash-attn-res"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "commit": _command(["git", "rev-parse", "--short", "HEAD"]) or "unknown",
        "budget_s": budget,
        "dry_run": dry,
    }


def junit_counts(path: Path) -> dict:
    """passed / failed / errors / skipped, and the failing test ids, from pytest's JUnit XML."""
    if not path.exists():
        return {}
    root = ET.parse(path).getroot()
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": []}
    for case in root.iter("testcase"):
        kinds = {child.tag for child in case}
        test_id = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        if "failure" in kinds:
            counts["failed"] += 1
            counts["failures"].append(test_id)
        elif "error" in kinds:
            counts["errors"] += 1
            counts["failures"].append(test_id)
        elif "skipped" in kinds:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


KEY_OPS = ("attnres", "block (phase 1 + S merges)")


def summarize_kernels(data: dict) -> dict:
    """The figures the targets speak of, at the benchmark's main shape: forward+backward of
    Full AttnRes and of a whole Block AttnRes block on our kernels, and statistics on over off."""
    main = data["header"]["shape"]
    rows = [r for r in data["rows"] if r["shape"] == main and r["pass_"] == "fwd+bwd"]
    found = {}
    for op in KEY_OPS:
        ours = {r["stats"]: r for r in rows if r["op"] == op and r["impl"] == "triton"}
        off, on = ours.get(False), ours.get(True)
        if not off or not off["ms"]:
            continue
        found[op] = {
            "ms": off["ms"],
            "copy_fraction": off["copy_fraction"],
            "vs_flash_attn_res": off["speedup_vs_flash_attn_res"],
            "stats_on_over_off": on["ms"] / off["ms"] if on and on["ms"] else None,
        }
    parts = []
    for op, f in found.items():
        text = f"{op.split(' ')[0]} f+b {f['ms']:.3f} ms"
        if f["copy_fraction"] is not None:
            text += f" {f['copy_fraction']:.0%} of copy BW"
        if f["vs_flash_attn_res"]:
            text += f" {f['vs_flash_attn_res']:.2f}× flash-attn-res"
        if f["stats_on_over_off"]:
            text += f" stats {f['stats_on_over_off']:.3f}×"
        parts.append(text)
    return {
        "ops": found,
        "line": "; ".join(parts),
        "flash-attn-res": data["header"].get("flash-attn-res"),
    }


def summarize_train_step(data: dict) -> dict:
    rows = data["rows"]
    parts = []
    for r in rows:
        if r["variant"] == "baseline":
            if r["error"]:
                parts.append(f"baseline: {r['error'][:60]}")
            continue
        if r["x_baseline"] is not None:
            text = f"{r['variant']} {r['x_baseline']:.3f}×"
            if r["x_without_stats"] is not None:
                text += f" ({r['x_without_stats']:.3f}× off)"
            parts.append(text)
        elif r["error"]:
            parts.append(f"{r['variant']}: {r['error'][:60]}")
    base = next((r for r in rows if r["variant"] == "baseline" and r["ms"]), None)
    if base:
        parts.insert(0, f"baseline {base['ms']:.1f} ms")
    return {"rows": rows, "line": ", ".join(parts)}


_PROBE_ROW = re.compile(
    r"^\|\s*(\w+)\s*\|\s*probe every=(\d+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|"
)


def parse_probe_table(text: str) -> list[dict]:
    """The probe rows (every=1, every=10) of benchmarks/probe_overhead.py's table."""
    return [
        {"kind": m[1], "every": int(m[2]), "ms": float(m[3]), "ratio": float(m[4])}
        for m in map(_PROBE_ROW.match, text.splitlines())
        if m
    ]


def check_targets(results: list[StageResult], dry: bool) -> list[tuple[str, str, str]]:
    """(target, measured, met) for each target a stage measured (a dry run meets none)."""
    by = {r.name: r.details for r in results}
    out = []

    def add(target: str, value: float | None, shown: str, met: bool | None) -> None:
        verdict = "dry run" if dry else "—" if value is None else "yes" if met else "NO"
        out.append((target, shown or "—", verdict))

    for op, f in by.get("kernels", {}).get("ops", {}).items():
        short = op.split(" ")[0]
        far, cf, so = f["vs_flash_attn_res"], f["copy_fraction"], f["stats_on_over_off"]
        add(
            f"{short} f+b ≥ 1.2× flash-attn-res",
            far,
            f"{far:.2f}×" if far else "flash-attn-res not measured",
            far and far >= 1.2,
        )
        add(
            f"{short} f+b ≥ 75 % of copy bandwidth",
            cf,
            f"{cf:.0%}" if cf else "",
            cf and cf >= 0.75,
        )
        add(f"{short} statistics on ≤ 1.03× off", so, f"{so:.3f}×" if so else "", so and so <= 1.03)
    for mode in ("eager", "compiled"):
        for r in by.get(f"train_step_{mode}", {}).get("rows", []):
            if r["variant"] == "block":
                x = r["x_baseline"]
                add(
                    f"block step ≤ 1.05× baseline ({mode})",
                    x,
                    f"{x:.3f}×" if x else r["error"][:60],
                    x and x <= 1.05,
                )
    for r in by.get("probe_overhead", {}).get("rows", []):
        if r["every"] == 1:
            add(
                f"probe every=1 ≤ 1.03× ({r['kind']})",
                r["ratio"],
                f"{r['ratio']:.3f}×",
                r["ratio"] <= 1.03,
            )
    return out


# ----------------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/gpu_check.sh", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    p.add_argument(
        "--out",
        type=Path,
        default=os.environ.get("OUT") or None,
        help="folder for the results (default: $OUT)",
    )
    p.add_argument(
        "--wheels",
        type=Path,
        default=ROOT / ".gpu-wheels",
        help="carried wheels (scripts/gpu_wheels.sh fills it)",
    )
    p.add_argument("--budget", type=float, default=450, help="seconds for all stages")
    p.add_argument("--box-scale", type=float, default=1.0, help="scale every stage's time box")
    p.add_argument(
        "--only",
        help=f"stages to run, of {','.join(STAGES)} (a fresh machine needs install)",
    )
    p.add_argument("--parity-k", help="pytest -k expression for the parity stage")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="the same stages on the CPU: interpreter, toy sizes, pip --dry-run",
    )
    args = p.parse_args(argv)
    if args.out is None:
        p.error("no output folder: pass --out DIR (or set OUT)")
    if args.budget < MIN_STAGE_S + RESERVE_S:
        p.error(
            f"--budget {args.budget:g} leaves no stage time; give at least "
            f"{MIN_STAGE_S + RESERVE_S} seconds"
        )
    if args.only:
        args.only = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in args.only if s not in STAGES]
        if unknown:
            p.error(f"--only: unknown stage {unknown[0]!r}; choose from {','.join(STAGES)}")
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out} is a file; give a folder")
    return args


def main(argv: list[str] | None = None) -> int:
    return Check(parse(argv)).main()


if __name__ == "__main__":
    sys.exit(main())
