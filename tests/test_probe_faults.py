"""The probe under faults: it detaches always, never stops training unless asked, and says why."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from fsspec.implementations.memory import MemoryFileSystem
from probe_checks import (
    batch,
    committed_steps,
    hook_count,
    lm_loss,
    read_run,
    reference_native,
    tiny_model,
    train_steps,
)
from torch import nn

from attnres_probe.hooks import (
    LayerDiscoveryError,
    ProbeError,
    ProbeStoreError,
    ProbeWarning,
    probe,
)
from attnres_probe.store import open_run


@pytest.mark.parametrize("residual", ["baseline", "block"])
def test_every_hook_is_removed_on_exit_and_the_model_computes_as_before(residual, tmp_path):
    model = tiny_model(residual)
    tokens = batch(0)
    with torch.no_grad():
        before = model(tokens[:, :-1])
    assert hook_count(model) == 0
    with probe(model, tmp_path / "run", every=2) as p:
        # Only the probe's pre/post hooks on the model, recorded step or not: the model takes
        # the probe's recording for recorded steps and adds into it itself.
        assert model.recording is p.rec  # step 0 is recorded
        train_steps(model, p, [tokens])
        assert hook_count(model) == 2 and model.recording is None  # step 1 is not
        train_steps(model, p, [tokens])
        assert hook_count(model) == 2 and model.recording is p.rec
    assert hook_count(model) == 0
    assert model.recording is None
    with torch.no_grad():  # SGD moved the weights: compare against a fresh copy instead
        fresh = tiny_model(residual)
        fresh.load_state_dict(model.state_dict())
        torch.testing.assert_close(model(tokens[:, :-1]), fresh(tokens[:, :-1]))
    assert before.shape == fresh(tokens[:, :-1]).shape


def test_hooks_are_removed_when_training_raises_and_the_run_says_interrupted(tmp_path):
    model = tiny_model("full")
    with pytest.raises(RuntimeError, match="boom"):
        with probe(model, tmp_path / "run") as p:
            train_steps(model, p, [batch(0), batch(1)])
            model(batch(2)[:, :-1])  # a recorded forward, then the loop dies
            raise RuntimeError("boom")
    assert hook_count(model) == 0
    assert model.recording is None
    ds = read_run(tmp_path / "run")
    assert ds["step"].values.tolist() == [0, 1]  # closed steps were flushed on the way out
    assert ds.attrs["status"] == "interrupted"


def test_a_forward_that_raises_midway_drops_its_step_and_the_probe_keeps_working(tmp_path):
    model = tiny_model("baseline")
    mlp = model.layers[1].mlp
    broken = mlp.register_forward_hook(lambda m, a, o: 1 / 0)  # after half the sublayers ran
    with probe(model, tmp_path / "run") as p:
        with pytest.raises(ZeroDivisionError):
            model(batch(0)[:, :-1])
        broken.remove()
        with pytest.warns(ProbeWarning, match="step 0 raised midway"):
            train_steps(model, p, [batch(0)])  # the same step goes on, then closes
        train_steps(model, p, [batch(1)])
    expected = reference_native(model, batch(2))  # (a step of the healthy model, for shapes)
    ds = read_run(tmp_path / "run")
    assert ds["step"].values.tolist() == [1]  # step 0 had partial statistics: not recorded
    assert ds["hidden_rms"].shape[1] == expected["hidden_rms"].shape[0]


def test_nan_loss_and_inf_activations_are_recorded_counted_and_training_goes_on(tmp_path):
    model = tiny_model("full")
    reported = []
    with probe(model, tmp_path / "run", on_nonfinite=lambda s, n: reported.append((s, n))) as p:
        train_steps(model, p, [batch(0)])
        lm_loss(model, batch(1)).backward()
        p.step(loss=torch.tensor(float("nan")))  # step 1: only the loss is bad
        model.zero_grad()
        with torch.no_grad():
            saved = model.layers[1].mlp.proj.weight.clone()
            model.layers[1].mlp.proj.weight[0, 0] = float("inf")
        lm_loss(model, batch(2)).backward()  # step 2: inf activations and gradients
        p.step(loss=torch.tensor(1.0))
        model.zero_grad()
        with torch.no_grad():
            model.layers[1].mlp.proj.weight.copy_(saved)
        train_steps(model, p, [batch(3)])  # step 3: healthy again
    ds = read_run(tmp_path / "run")
    nonfinite = ds["nonfinite"].values.tolist()
    assert nonfinite[0] == 0 and nonfinite[3] == 0
    assert nonfinite[1] == 1 and np.isnan(ds["loss"].values[1])
    assert nonfinite[2] > 1  # the MLP's update and everything downstream
    assert not np.isfinite(ds["update_rms"].sel(step=2, sublayer=3).values)
    assert np.isfinite(ds["update_rms"].sel(step=2, sublayer=0).values)
    assert np.isfinite(ds["hidden_rms"].values[3]).all()
    assert reported == [(1, 1), (2, nonfinite[2])]


def test_attaching_a_second_probe_to_a_model_is_refused(tmp_path):
    model = tiny_model("baseline")
    with probe(model, tmp_path / "a"):
        with pytest.raises(ProbeError, match="already probed .* one probe at a time"):
            with probe(model, tmp_path / "b"):
                pass
        assert hook_count(model) == 2
    with probe(model, tmp_path / "c") as p:  # free again after the first one left
        train_steps(model, p, [batch(0)])
    assert not (tmp_path / "b").exists()


def test_without_gradients_the_gradient_variables_are_missing_not_zero(tmp_path):
    model = tiny_model("full").eval()
    with probe(model, tmp_path / "run") as p:
        with torch.no_grad():
            loss = lm_loss(model, batch(0))
        p.step(loss=loss)
        loss = lm_loss(model, batch(1))  # grad enabled, but no backward
        p.step(loss=loss)
    ds = read_run(tmp_path / "run")
    for name in ("grad_norm", "param_grad_norm"):
        assert np.isnan(ds[name].values).all(), name
    for name in ("loss", "hidden_rms", "update_rms", "cos_in_out", "depth_weights_out"):
        assert np.isfinite(ds[name].values).all(), name
    assert ds["nonfinite"].values.tolist() == [0, 0]


def test_a_model_without_recognisable_layers_gets_an_error_saying_how_to_name_them(tmp_path):
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 10))
    with pytest.raises(LayerDiscoveryError, match=r"Linear×2.*layers="):
        with probe(model, tmp_path / "run"):
            pass
    assert hook_count(model) == 0
    assert not (tmp_path / "run").exists()


class FailingMemoryFileSystem(MemoryFileSystem):
    """In-memory files whose writes fail while ``failing`` is set."""

    protocol = "probefailmem"
    failing = False

    def pipe_file(self, path, value, *args, **kwargs):
        if FailingMemoryFileSystem.failing:
            raise OSError(28, "No space left on device")
        return super().pipe_file(path, value, *args, **kwargs)

    def open(self, path, mode="rb", *args, **kwargs):
        if FailingMemoryFileSystem.failing and "w" in mode:
            raise OSError(28, "No space left on device")
        return super().open(path, mode, *args, **kwargs)


@pytest.fixture
def failing_url(monkeypatch):
    fsspec.register_implementation("probefailmem", FailingMemoryFileSystem, clobber=True)
    monkeypatch.setattr(FailingMemoryFileSystem, "failing", False)
    return f"probefailmem://runs-{uuid.uuid4().hex}/run"


def test_a_failing_store_warns_once_and_training_goes_on(failing_url):
    model = tiny_model("baseline")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with probe(model, failing_url, flush_every=2) as p:
            losses = train_steps(model, p, [batch(i) for i in range(2)])
            FailingMemoryFileSystem.failing = True
            losses += train_steps(model, p, [batch(i) for i in range(2, 8)])
            FailingMemoryFileSystem.failing = False
            assert open_run(failing_url)["step"].values.tolist() == [0, 1]  # last good flush
            losses += train_steps(model, p, [batch(i) for i in range(8, 10)])
    probe_warnings = [w for w in caught if issubclass(w.category, ProbeWarning)]
    assert len(probe_warnings) == 1
    assert "No space left on device" in str(probe_warnings[0].message)
    assert len(losses) == 10 and all(np.isfinite(losses))
    # the writer kept the steps of its failed flushes and wrote them once the disk recovered
    assert open_run(failing_url)["step"].values.tolist() == list(range(10))


def test_a_failing_store_raises_when_strict(failing_url):
    model = tiny_model("baseline")
    with pytest.raises(ProbeStoreError, match="No space left on device"):
        with probe(model, failing_url, flush_every=2, strict=True) as p:
            train_steps(model, p, [batch(0), batch(1)])
            FailingMemoryFileSystem.failing = True
            train_steps(model, p, [batch(2), batch(3)])
    FailingMemoryFileSystem.failing = False
    assert hook_count(model) == 0
    assert open_run(failing_url)["step"].values.tolist() == [0, 1]


def test_a_store_that_cannot_be_created_leaves_training_unrecorded(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    model = tiny_model("baseline")
    with pytest.warns(ProbeWarning, match="training goes on"):
        with probe(model, blocker / "run") as p:
            seen = []
            handle = model.register_forward_hook(lambda m, a, o: seen.append(model.recording))
            assert len(train_steps(model, p, [batch(0), batch(1)])) == 2
            handle.remove()
    assert seen == [None, None]  # nothing is computed for a run that cannot be written


KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[2])
    import torch
    from attnres_probe.hooks import probe
    from probe_checks import batch, tiny_model, train_steps
    torch.set_num_threads(1)
    model = tiny_model("full")
    with probe(model, sys.argv[1], flush_every=2) as p:
        step = 0
        while True:
            train_steps(model, p, [batch(step)])
            step += 1
    """
)


def test_a_recording_killed_with_sigkill_opens_with_every_committed_flush(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(run), str(Path(__file__).parent)],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while committed_steps(run) < 6:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the recording never committed 6 steps"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ds = open_run(run).load()
    n = ds.sizes["step"]
    assert n >= 6 and n % 2 == 0  # whole flushes only
    assert ds["step"].values.tolist() == list(range(n))
    assert np.isfinite(ds["hidden_rms"].values).all()
    assert np.isfinite(ds["depth_weights_out"].values).all()
    assert ds.attrs["status"] == "interrupted"


def test_a_closed_probe_cannot_be_entered_again_and_its_run_stays(tmp_path):
    model = tiny_model("baseline")
    p = probe(model, tmp_path / "run")
    with p:
        train_steps(model, p, [batch(0), batch(1)])
    with pytest.raises(ProbeError, match="already recorded .* make a new probe"):
        with p:
            train_steps(model, p, [batch(2)])
    assert read_run(tmp_path / "run")["step"].values.tolist() == [0, 1]
    assert hook_count(model) == 0


def test_a_model_on_the_meta_device_is_refused_at_attach(tmp_path):
    with torch.device("meta"):
        model = tiny_model("full")
    with pytest.raises(ProbeError, match="meta device"):
        with probe(model, tmp_path / "run"):
            pass
    assert not (tmp_path / "run").exists() and hook_count(model) == 0


def test_p_step_twice_without_a_forward_warns_once(tmp_path):
    model = tiny_model("baseline")
    with probe(model, tmp_path / "run") as p:
        train_steps(model, p, [batch(0)])
        with pytest.warns(ProbeWarning, match="no forward of the model"):
            p.step()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            p.step()  # told once
        train_steps(model, p, [batch(1)])
    assert read_run(tmp_path / "run")["step"].values.tolist() == [0, 1, 2, 3]


def test_p_step_from_another_thread_is_refused(tmp_path):
    import threading

    model = tiny_model("baseline")
    errors = []
    with probe(model, tmp_path / "run") as p:
        lm_loss(model, batch(0)).backward()

        def other():
            try:
                p.step()
            except ProbeError as err:
                errors.append(str(err))

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        p.step()  # the loop's own thread goes on
    assert len(errors) == 1 and "another thread" in errors[0]
    assert read_run(tmp_path / "run")["step"].values.tolist() == [0]


def test_a_flush_buffer_too_large_is_refused_with_the_largest_that_fits(tmp_path):
    model = tiny_model("block")
    with pytest.raises(ProbeError, match=r"flush_every=1000000 needs .* MiB .* flush_every <= \d+"):
        with probe(model, tmp_path / "run", flush_every=10**6):
            pass
    assert not (tmp_path / "run").exists()
