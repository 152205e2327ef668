"""Load: training processes write runs under one ROOT while the dashboard reads all of them.

The long test (four trainers for ``DURATION_S`` seconds, about 2.7 minutes on 2 cores) is
``slow``: run it with ``pytest -m slow tests/test_load.py``. The short one keeps the same
checks in the default suite: two trainers, the Runs page and one run page per round, until
the dashboard has seen every run grow (about 20 s on an idle 2-core machine).

Each trainer is a tiny model recorded by the probe (``strict=True``: a failed store write
ends it with an error) that trains until its deadline, flushing a few times a second. The
dashboard is driven through Streamlit's AppTest in this process, as one user who keeps
going round the runs: the Runs page, then the run on every run page. Every rerun is checked
for exceptions, errors and warnings, the Runs table for a consistent prefix of steps, and
each store directly with ``open_run`` for the same. At the end every run must be finished
and hold exactly the steps it was asked to record, and the dashboard must have seen each run
grow while it was live.

The numbers (reruns, flushes written and seen, peak RSS) are printed; see them with ``-s``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from attnres_probe.app.confine import ROOT_ENV

DURATION_S = 120.0  # how long every trainer keeps writing while the dashboard reads
RUNS = {"baseline-a": "baseline", "full": "full", "block": "block", "baseline-b": "baseline"}
# The default suite's load: two trainers, the Runs page and one run page each round, until the
# dashboard has seen every run grow (at most SHORT_S seconds of training).
SHORT_S = 30.0
SHORT_RUNS = {"baseline": "baseline", "block": "block"}
SHORT_PAGES = ("dilution",)
EVERY = 2  # record every 2nd step
FLUSH_EVERY = 4  # a flush every 8 training steps: a few flushes a second per run
PAUSE_S = 0.02  # between training steps, so four trainers leave the dashboard some CPU
RUN_PAGES = ("dilution", "depth_attention", "gradients", "pruning", "compare")
DASHBOARD = Path(__file__).resolve().parents[1] / "app" / "dashboard.py"

TRAINER = """
import json, os, sys, time
import torch
from attnres_probe import ModelConfig, build_model
from attnres_probe.hooks import probe
from attnres_probe.train import TrainConfig, lm_loss, make_optimizer

run, residual, duration, every, flush_every, pause, seed, stop = sys.argv[1:9]
torch.set_num_threads(1)
torch.manual_seed(int(seed))
cfg = ModelConfig(
    residual=residual, n_layers=2, d_model=16, n_heads=2, n_blocks=2, max_seq_len=16
)
model = build_model(cfg)
opt = make_optimizer(model, TrainConfig())
steps = 0
deadline = time.monotonic() + float(duration)
with probe(model, run, every=int(every), flush_every=int(flush_every), strict=True) as p:
    while time.monotonic() < deadline and not os.path.exists(stop):
        loss = lm_loss(model, torch.randint(0, 256, (2, 17)))
        loss.backward()
        p.step(loss=loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        steps += 1
        time.sleep(float(pause))
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print(json.dumps({"steps": steps, "peak_rss_kib": peak}))
"""


def peak_rss_kib() -> int:
    """This process's peak resident set size (VmHWM) in KiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def reset_peak_rss() -> None:
    """Start VmHWM again from the current RSS (Linux: writing 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # then the figure is the peak of the whole test session


def problems(at: AppTest) -> list[str]:
    """Exceptions, errors and warnings the last rerun showed (this ROOT deserves none: no run
    in it is broken, refused or read in part)."""
    return [e.message for e in at.exception] + [e.value for e in (*at.error, *at.warning)]


class Dashboard:
    """One user going round the dashboard; every rerun is checked and counted."""

    def __init__(self, runs: dict[str, str], pages: tuple[str, ...]) -> None:
        self.at = AppTest.from_file(str(DASHBOARD), default_timeout=120)
        self.pages = pages
        self.reruns = 0
        self.slowest_s = 0.0
        self.failures: list[str] = []
        self.table_seen: dict[str, list[tuple[str, int]]] = {name: [] for name in runs}
        self.slider_max: dict[str, list[int]] = {name: [] for name in runs}

    def run(self, where: str, call=None) -> None:
        """Rerun the app (through ``call``, e.g. a widget change, or plainly) and check it."""
        start = time.perf_counter()
        (call or self.at.run)()
        self.slowest_s = max(self.slowest_s, time.perf_counter() - start)
        self.reruns += 1
        self.failures += [f"{where}: {p}" for p in problems(self.at)]

    def runs_page(self) -> dict[str, dict]:
        self.run("runs", self.at.switch_page("views/runs.py").run)
        if not self.at.dataframe:
            return {}
        table = self.at.dataframe[0].value.set_index("run")
        rows = {name: table.loc[name].to_dict() for name in table.index}
        for name, row in rows.items():
            if row["state"] not in ("live", "finished"):
                self.failures.append(f"runs: {name} is {row['state']}: {row['message']}")
            steps = int(row["recorded steps"])
            self.table_seen[name].append((row["state"], steps))
            if steps and row["last step"] != (steps - 1) * EVERY:  # a prefix of whole steps
                self.failures.append(f"runs: {name} lists {steps} steps, last {row['last step']}")
        return rows

    def run_pages(self, name: str) -> None:
        picker = next((s for s in self.at.sidebar.selectbox if s.key == "run"), None)
        if picker is None or name not in picker.options:
            return  # not listed yet
        self.run(f"select {name}", picker.select(name).run)
        for page in self.pages:
            self.run(f"{page} {name}", self.at.switch_page(f"views/{page}.py").run)
            window = next((c for c in self.at.segmented_control if c.key == "window"), None)
            if page != "compare" and window is not None:  # one step: the slider's end counts
                self.run(f"{page} {name} one step", window.set_value("one step").run)
            if page != "compare" and self.at.slider:
                slider = next((s for s in self.at.slider if s.key == "step"), None)
                if slider is not None:
                    self.slider_max[name].append(int(slider.max))


def check_store(path: Path) -> tuple[int, str]:
    """(recorded steps, status) of the run read directly; fails on anything but a prefix of
    whole steps ``0, EVERY, 2 * EVERY, ...`` with a finite loss each."""
    from attnres_probe.store import open_run

    ds = open_run(path)
    if ds.sizes.get("step", 0) == 0:  # created, nothing committed yet
        return 0, str(ds.attrs["status"])
    steps = ds["step"].values
    assert np.array_equal(steps, np.arange(steps.size) * EVERY), f"{path.name}: steps {steps}"
    assert np.isfinite(ds["loss"].values).all(), f"{path.name}: non-finite loss"
    return int(steps.size), str(ds.attrs["status"])


def load(
    tmp_path: Path,
    monkeypatch,
    runs: dict[str, str],
    duration_s: float,
    pages: tuple[str, ...],
    from_start: bool = True,
    enough=None,
) -> dict:
    """Train ``runs`` (name -> residual kind) for ``duration_s`` seconds each while one
    dashboard user goes round the Runs page and ``pages`` of every run; check every rerun and
    every store. ``from_start``: the dashboard is opened before any run exists (else once
    every run has its store, so a short load is not spent waiting for the list of runs,
    which the dashboard refreshes every few seconds). ``enough(dashboard)``: True stops the
    trainers before their deadline. Returns what was seen."""
    from streamlit.components.v2 import manifest_scanner

    found = manifest_scanner.scan_component_manifests()
    monkeypatch.setattr(manifest_scanner, "scan_component_manifests", lambda: found)
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.setenv(ROOT_ENV, str(root))
    reset_peak_rss()
    rss_at_start = peak_rss_kib()  # what earlier tests in this process left resident
    started = time.monotonic()

    trainers = {}
    for seed, (name, residual) in enumerate(runs.items()):
        stop = tmp_path / "stop"
        args = [root / name, residual, duration_s, EVERY, FLUSH_EVERY, PAUSE_S, seed, stop]
        trainers[name] = subprocess.Popen(
            [sys.executable, "-c", TRAINER, *map(str, args)],
            stdout=(tmp_path / f"{name}.out").open("w"),
            stderr=(tmp_path / f"{name}.err").open("w"),
        )
    while not from_start and not all(
        (root / name / "recording.zarr" / "zarr.json").is_file() for name in runs
    ):
        if any(t.poll() is not None for t in trainers.values()):
            break  # a trainer failed: its report says why
        if time.monotonic() - started > 120:
            pytest.fail("the trainers did not create their runs within 2 minutes")
        time.sleep(0.05)
    dashboard = Dashboard(runs, pages)
    opened_after = time.monotonic() - started
    dashboard.run("start")
    store_reads = 0
    try:
        while True:
            finished = all(t.poll() is not None for t in trainers.values())
            for name in runs:
                dashboard.runs_page()
                dashboard.run_pages(name)
                if (root / name / "recording.zarr" / "zarr.json").is_file():
                    check_store(root / name)
                    store_reads += 1
            if finished:  # one whole round after the last trainer ended
                break
            if enough is not None and enough(dashboard):
                (tmp_path / "stop").touch()
            if time.monotonic() - started > duration_s + 180:
                pytest.fail("the trainers did not stop within 3 minutes of their deadline")
    finally:
        for t in trainers.values():
            if t.poll() is None:
                t.kill()
                t.wait()
    final = dashboard.runs_page()
    wall = time.monotonic() - started

    reports = {}
    for name, t in trainers.items():
        err = (tmp_path / f"{name}.err").read_text()
        assert t.returncode == 0, (name, err)
        assert "Traceback" not in err and "ProbeWarning" not in err, (name, err)
        reports[name] = json.loads((tmp_path / f"{name}.out").read_text().strip().splitlines()[-1])

    seen = {}
    for name, report in reports.items():
        expected = np.arange(0, report["steps"], EVERY)
        n, status = check_store(root / name)
        assert (n, status) == (expected.size, "finished"), (name, n, status, expected.size)
        assert final[name]["state"] == "finished"
        assert final[name]["recorded steps"] == expected.size
        table = dashboard.table_seen[name]
        assert [s for _, s in table] == sorted(s for _, s in table), (name, table)  # never shrinks
        slider = dashboard.slider_max[name]  # the step slider's end on the run's pages
        assert slider == sorted(slider), (name, slider)
        seen[name] = {
            "recorded": int(expected.size),
            "flushes": -(-expected.size // FLUSH_EVERY),
            "live_counts": len({steps for state, steps in table if state == "live"}),
            "slider_ends": len(set(slider)),
        }
    assert not dashboard.failures, dashboard.failures[:20]

    steps_text = ", ".join(f"{k} {v['recorded']}" for k, v in seen.items())
    trainer_rss = ", ".join(f"{r['peak_rss_kib'] / 1024:.0f}" for r in reports.values())
    print(
        f"\nload: {len(runs)} trainers (deadline {duration_s:.0f} s), wall {wall:.0f} s "
        f"(dashboard opened after {opened_after:.0f} s); "
        f"dashboard reruns {dashboard.reruns} (slowest {dashboard.slowest_s:.1f} s), "
        f"direct store reads {store_reads}; "
        f"flushes written {sum(v['flushes'] for v in seen.values())}, distinct flushes seen "
        f"on Runs {sum(v['live_counts'] for v in seen.values())}; recorded steps {steps_text}; "
        f"peak RSS dashboard (test process) {peak_rss_kib() / 1024:.0f} MiB "
        f"({rss_at_start / 1024:.0f} MiB at the start), trainers {trainer_rss} MiB"
    )
    return seen


@pytest.mark.timeout(int(SHORT_S) + 120)
@pytest.mark.filterwarnings("error::attnres_probe.store.RunStoreWarning")  # a read in part
def test_two_runs_written_while_the_dashboard_reads_them_lose_nothing(tmp_path, monkeypatch):
    def enough(dashboard: Dashboard) -> bool:  # every run seen growing, on Runs and its page
        return all(
            len({n for state, n in dashboard.table_seen[name] if state == "live"}) >= 2
            and len(set(dashboard.slider_max[name])) >= 2
            for name in SHORT_RUNS
        )

    seen = load(
        tmp_path, monkeypatch, SHORT_RUNS, SHORT_S, SHORT_PAGES, from_start=False, enough=enough
    )
    for name, run in seen.items():
        assert run["live_counts"] >= 2, f"{name}: the dashboard never saw it grow ({run})"
        assert run["slider_ends"] >= 2, f"{name}: the step slider never followed it ({run})"


@pytest.mark.slow
@pytest.mark.timeout(int(DURATION_S) + 240)
@pytest.mark.filterwarnings("error::attnres_probe.store.RunStoreWarning")  # a read in part
def test_four_runs_written_while_the_dashboard_reads_them_lose_nothing(tmp_path, monkeypatch):
    seen = load(tmp_path, monkeypatch, RUNS, DURATION_S, RUN_PAGES)
    for name, run in seen.items():
        assert run["live_counts"] >= 5, f"{name}: the dashboard saw it grow only {run}"
        assert run["slider_ends"] >= 3, f"{name}: the step slider followed it only {run}"
        assert run["flushes"] >= DURATION_S / 5, f"{name}: {run['flushes']} flushes"
