"""A run never mixes two trainings.

An existing run is replaced only when asked (moved aside first, in one rename), never while
another process records it; a checkpoint names the recording it was trained with and carries
the SHA-256 of its weights; every loader of a run's model (pruning, the greedy path, the
dashboard's per-token view, ``info``) refuses a checkpoint that is damaged, of another model
or of another recording, in one line naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from probe_checks import committed_steps
from synthetic_runs import small_corpus
from tiny_training import TINY_OPTIONS, error_line, invoke, tiny_train

from attnres_probe.checkpoint import CheckpointError, CheckpointMismatchError, load_model
from attnres_probe.store import open_run, run_info


def config_of(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def aside_folders(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if p.name.startswith(".") and p.is_dir())


def test_the_checkpoint_names_its_recording_and_the_checksum_of_its_weights(tmp_path):
    result = tiny_train(tmp_path / "run")
    config = config_of(tmp_path / "run")
    recorded = open_run(tmp_path / "run").attrs["recording_id"]
    assert config["recording_id"] == recorded == result.recording_id
    assert len(recorded) == 32
    weights = (tmp_path / "run" / "checkpoint.safetensors").read_bytes()
    assert config["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    other = tiny_train(tmp_path / "other")  # same seed and data: still another recording
    assert other.recording_id != result.recording_id


def test_train_refuses_a_run_that_exists_and_changes_nothing(tmp_path):
    run = tmp_path / "run"
    tiny_train(run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = invoke("train", *TINY_OPTIONS, "--steps", "2", "--data", small_corpus(), "--out", run)
    assert result.exit_code == 1, result.output
    line = error_line(result.stderr)
    assert "already holds a run" in line and "--overwrite" in line and str(run) in line
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_overwrite_replaces_the_whole_run_and_removes_the_old_one(tmp_path):
    run = tmp_path / "run"
    old = tiny_train(run).recording_id
    (run / "recording.zarr" / "stale.txt").write_text("left by the old run")
    args = ("train", *TINY_OPTIONS, "--steps", "3", "--data", small_corpus(), "--out", run)
    result = invoke(*args, "--overwrite")
    assert result.exit_code == 0, result.output
    new = config_of(run)["recording_id"]
    assert new != old and open_run(run).attrs["recording_id"] == new
    assert not (run / "recording.zarr" / "stale.txt").exists()
    assert aside_folders(tmp_path) == []  # the old run is gone once the new one is complete
    assert "moved the old run aside" in result.stderr


def test_overwrite_refuses_a_folder_holding_more_than_the_run(tmp_path):
    run = tmp_path / "run"
    tiny_train(run)
    (run / "notes.txt").write_text("mine")
    args = ("train", *TINY_OPTIONS, "--steps", "2", "--data", small_corpus(), "--out", run)
    result = invoke(*args, "--overwrite")
    assert result.exit_code == 1
    assert "'notes.txt'" in error_line(result.stderr)
    assert (run / "notes.txt").read_text() == "mine" and (run / "checkpoint.safetensors").exists()


def _start_training(run: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "attnres_probe.cli", "train", *TINY_OPTIONS]
    args += ["--steps", "100000", "--data", small_corpus(), "--out", str(run), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True
    )


def _wait_for_flush(child: subprocess.Popen, run: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while committed_steps(run) < 1 or run_info(run).status != "live":
        if child.poll() is not None:
            pytest.fail(f"the training ended early: {child.stderr.read()}")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail("the training stored no flush in time")
        time.sleep(0.1)


def test_an_interrupted_overwrite_never_pairs_the_old_checkpoint_with_the_new_recording(tmp_path):
    """A real process replaces a run and is killed halfway: the old run waits, whole, in a
    hidden folder beside it; the run holds only the new recording, so nothing pairs the two;
    while it trains, a second trainer is refused even with --overwrite."""
    run = tmp_path / "run"
    old = tiny_train(run).recording_id
    child = _start_training(run, "--overwrite")
    try:
        _wait_for_flush(child, run)
        assert not (run / "checkpoint.safetensors").exists()
        (aside,) = aside_folders(tmp_path)
        assert config_of(aside)["recording_id"] == old  # the old run, whole
        assert load_model(aside).cfg.n_layers == 1

        second = invoke("train", *TINY_OPTIONS, "--steps", "2", "--out", run, "--overwrite")
        assert second.exit_code == 1
        assert "being recorded by another process" in error_line(second.stderr)
        assert child.poll() is None  # the writer goes on
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert open_run(run).attrs["recording_id"] != old
    pruned = invoke("prune", run)
    assert pruned.exit_code == 1 and "no checkpoint.safetensors" in error_line(pruned.stderr)
    assert (aside / "checkpoint.safetensors").exists()  # kept: nothing replaced it yet


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two tiny trainings, each with single-layer pruning results stored (the greedy path reads
    them); copied per test."""
    from attnres_probe.analysis.pruning import prune_run

    base = tmp_path_factory.mktemp("pairs")
    for name, seed in (("a", 0), ("b", 1)):
        tiny_train(base / name, seed=seed)
        prune_run(base / name, "layer", batches=1)
    return base


@pytest.fixture
def runs(two_runs, tmp_path) -> tuple[Path, Path]:
    for name in ("a", "b"):
        shutil.copytree(two_runs / name, tmp_path / name)
    return tmp_path / "a", tmp_path / "b"


def _loaders(run: Path):
    """Every way the project loads a run's model."""
    from attnres_probe.analysis.pruning import prune_run
    from attnres_probe.app import tokens
    from attnres_probe.tools.prune_path import prune_path

    return {
        "load_model": lambda: load_model(run),
        "pruning": lambda: prune_run(run, "layer", batches=1),
        "greedy path": lambda: prune_path(run),
        "per-token view": lambda: tokens.token_depth_weights(run, "abc"),
    }


def test_a_checkpoint_beside_another_recording_is_refused_by_every_loader_and_info(runs):
    a, b = runs
    shutil.rmtree(a / "recording.zarr")
    shutil.copytree(b / "recording.zarr", a / "recording.zarr")  # b's recording, a's model
    for load in _loaders(a).values():
        with pytest.raises(CheckpointMismatchError, match="belongs to another recording"):
            load()
    for command in ("info", "prune"):
        result = invoke(command, a)
        assert result.exit_code == 1, (command, result.output)
        line = error_line(result.stderr)
        assert "belongs to another recording" in line and "--overwrite" in line, line
    assert load_model(b).cfg.n_layers == 1  # b itself is intact


def _flip_exponent_bit(weights: Path) -> float:
    """Flip the top exponent bit of the first float32 of the data: 0.0037 becomes ~1e36.
    Returns the new value."""
    raw = bytearray(weights.read_bytes())
    start = 8 + struct.unpack("<Q", raw[:8])[0]  # safetensors: header length, header, data
    raw[start + 3] ^= 0x40
    weights.write_bytes(bytes(raw))
    return struct.unpack("<f", raw[start : start + 4])[0]


def test_a_flipped_bit_in_the_weights_is_refused_by_every_loader(runs):
    a, _ = runs
    stored = open_run(a)["prune_loss"].values.copy()
    value = _flip_exponent_bit(a / "checkpoint.safetensors")
    assert abs(value) > 1e30 or abs(value) < 1e-30
    for load in _loaders(a).values():
        with pytest.raises(CheckpointError, match="does not match the SHA-256"):
            load()
    result = invoke("prune", a)
    assert result.exit_code == 1
    line = error_line(result.stderr)
    assert "checkpoint.safetensors" in line and "train the run again" in line
    assert (open_run(a)["prune_loss"].values == stored).all()  # nothing stored


def test_a_checkpoint_of_another_model_is_a_clear_error_not_a_bug(runs):
    a, _ = runs
    config = config_of(a)
    config["model"]["n_layers"] = 2  # config.json of another training, weights untouched
    (a / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not fit the model config.json describes"):
        load_model(a)
    result = invoke("prune", a, "--batches", "1")
    assert result.exit_code == 1
    assert "come from different trainings" in error_line(result.stderr)


def test_no_checkpoint_is_saved_beside_a_recording_another_process_replaced(tmp_path, monkeypatch):
    import attnres_probe.train as train_module

    monkeypatch.setattr(train_module, "recording_id", lambda run: "another-recording")
    with pytest.raises(train_module.TrainError, match="replaced by another process"):
        tiny_train(tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()
