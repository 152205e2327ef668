"""The command line under real faults and without a terminal.

A full disk when the checkpoint is saved and a run on read-only storage are clear errors (the
pruning results computed are printed, and the line says they could not be stored); progress
reaches a log or a pipe as lines while the work goes, never all at the end.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import sys
import time

from synthetic_runs import small_corpus
from test_full_disk import fill, small_disk  # noqa: F401 - a fixture
from tiny_training import TINY_OPTIONS, command, error_line, invoke, tiny_train

from attnres_probe.cli import common

# ----------------------------------------------------------------------------- faults


def test_a_full_disk_at_the_checkpoint_is_one_clear_line(small_disk):  # noqa: F811
    run = small_disk / "run"
    run.mkdir()
    fill(small_disk)
    args = ["train", *TINY_OPTIONS, "--steps", "2", "--every", "0", "--data", small_corpus()]
    done = command(*args, "--out", run)
    assert done.returncode == 1, done.stderr
    line = error_line(done.stderr)
    assert f"cannot save the checkpoint in {run}" in line, line
    assert "No space left on device" in line and "free space" in line, line
    assert sorted(p.name for p in run.iterdir()) == []  # no half-written file left behind


def test_prune_on_a_read_only_run_prints_its_results_and_says_they_were_not_stored(
    small_disk,  # noqa: F811
    tmp_path,
):
    tiny_train(tmp_path / "run")
    run = small_disk / "run"
    shutil.copytree(tmp_path / "run", run)
    remount = subprocess.run(
        ["mount", "-o", "remount,ro", str(small_disk)], capture_output=True, text=True
    )
    assert remount.returncode == 0, remount.stderr
    result = invoke("prune", run, "--batches", "1")
    assert result.exit_code == 1
    assert "L0" in result.stdout and "intact model: held-out loss" in result.stdout
    line = error_line(result.stderr)
    assert "the results above could not be stored" in line and "Read-only" in line, line


# ----------------------------------------------------------------------------- progress

PROGRESS = re.compile(r"^train baseline: (\d+)/200 \((\d+) %\) loss [\d.]+ · [\d,]+ tok/s$")


def test_train_progress_reaches_a_pipe_as_lines_while_it_trains(tmp_path):
    args = [sys.executable, "-m", "attnres_probe.cli", "train", *TINY_OPTIONS]
    args += ["--steps", "200", "--every", "0", "--data", small_corpus()]
    args += ["--out", str(tmp_path / "run")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    seen: list[tuple[str, bool]] = []  # (line, was the process still running when it came)
    buffer = b""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if select.select([child.stderr], [], [], 0.1)[0]:
            chunk = os.read(child.stderr.fileno(), 65536)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            running = child.poll() is None
            seen += [(line.decode(), running) for line in lines]
    child.wait(timeout=60)
    assert child.returncode == 0, seen
    assert seen[0][0].startswith("training with 1 torch thread")
    progress = [(PROGRESS.match(line), running) for line, running in seen if "/200" in line]
    assert all(match for match, _ in progress), seen
    steps = [int(match.group(1)) for match, _ in progress]
    assert steps == sorted(steps) and steps[-1] == 200 and len(steps) >= 4, steps
    assert len(steps) <= 25  # every 5 % (or 10 s): a log stays short
    assert sum(running for _, running in progress[:-1]) >= 3  # read as it trained


def test_prune_progress_is_one_line_per_step_of_the_work(tmp_path):
    tiny_train(tmp_path / "run")
    result = invoke("prune", tmp_path / "run", "--granularity", "sublayer", "--batches", "1")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("prune sublayer:")]
    assert lines == [
        "prune sublayer: 1/3 (33 %) intact model",
        "prune sublayer: 2/3 (67 %) L0.attn",
        "prune sublayer: 3/3 (100 %) L0.mlp",
    ]


def test_line_progress_prints_every_five_per_cent_or_ten_seconds(monkeypatch, capsys):
    clock = [0.0]
    monkeypatch.setattr(common.time, "monotonic", lambda: clock[0])
    bars = common.LineProgress(describe=lambda fields: f"at {fields['unit']}")
    task = bars.add_task("work", total=1000, unit="")
    for i in range(1, 1001):
        bars.update(task, completed=i, unit=str(i))
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "work: 1/1000 (0 %) at 1" and lines[-1] == "work: 1000/1000 (100 %) at 1000"
    assert len(lines) == 21  # 0, 5, 10, … 95 %, and the completion
    slow = bars.add_task("slow", total=10_000, unit="")
    for i in range(1, 5):
        clock[0] += 11.0  # a long task: a line every ~10 s although under 5 % is done
        bars.update(slow, completed=i, unit="")
    assert len(capsys.readouterr().err.splitlines()) == 4
