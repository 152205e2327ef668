"""Interrupted training: Ctrl-C and SIGTERM flush every buffered step before the process ends,
SIGKILL loses at most one flush interval."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from probe_checks import batch, committed_steps, read_run, tiny_model, train_steps

from attnres_probe.hooks import interrupts, probe
from attnres_probe.hooks.layout import RowLayout

TESTS = Path(__file__).parent
DEFAULTS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}


@pytest.fixture
def default_handlers():
    """Python's own SIGINT / SIGTERM handlers during the test, whatever ran it."""
    before = {signum: signal.getsignal(signum) for signum in DEFAULTS}
    for signum, handler in DEFAULTS.items():
        signal.signal(signum, handler)
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


# ----------------------------------------------------------------------------- in process


def test_ctrl_c_inside_the_with_flushes_every_buffered_step(tmp_path, default_handlers):
    model = tiny_model("baseline")
    with pytest.raises(KeyboardInterrupt):
        with probe(model, tmp_path / "run", flush_every=64) as p:
            train_steps(model, p, [batch(i) for i in range(5)])
            assert committed_steps(tmp_path / "run") == 0  # the 5 steps are only in the buffer
            raise KeyboardInterrupt
    ds = read_run(tmp_path / "run")
    assert ds["step"].values.tolist() == [0, 1, 2, 3, 4]
    assert ds.attrs["status"] == "interrupted"


def _signal_inside_the_next_flush(monkeypatch, signum: int) -> None:
    """Send ``signum`` to this process from inside the probe's next flush, at the point where
    its rows have left the buffer and not yet reached the store."""
    if signal.getsignal(signum) is not interrupts._handle:
        pytest.fail(f"the probe did not take over {signal.Signals(signum).name}")
    original = RowLayout.variables

    def variables_then_signal(self, *args, **kwargs):
        monkeypatch.setattr(RowLayout, "variables", original)
        out = original(self, *args, **kwargs)
        os.kill(os.getpid(), signum)
        return out

    monkeypatch.setattr(RowLayout, "variables", variables_then_signal)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_landing_inside_a_flush_waits_until_the_flush_is_stored(
    signum, tmp_path, monkeypatch, default_handlers
):
    model = tiny_model("baseline")
    raised = KeyboardInterrupt if signum == signal.SIGINT else SystemExit
    with pytest.raises(raised) as caught:
        with probe(model, tmp_path / "run", flush_every=4) as p:
            train_steps(model, p, [batch(i) for i in range(3)])
            _signal_inside_the_next_flush(monkeypatch, signum)
            train_steps(model, p, [batch(i) for i in range(3, 10)])  # step 3 flushes
            pytest.fail("the signal was swallowed")
    if signum == signal.SIGTERM:
        assert caught.value.code == 128 + signal.SIGTERM
    ds = read_run(tmp_path / "run")
    assert ds["step"].values.tolist() == [0, 1, 2, 3]  # the flush in flight was kept whole
    assert ds.attrs["status"] == "interrupted"
    assert signal.getsignal(signum) == DEFAULTS[signum]


def test_a_sigterm_during_the_exit_flush_waits_for_it_then_ends_the_process(
    tmp_path, monkeypatch, default_handlers
):
    model = tiny_model("full")
    with pytest.raises(SystemExit) as caught:
        with probe(model, tmp_path / "run", flush_every=64) as p:
            train_steps(model, p, [batch(i) for i in range(6)])
            _signal_inside_the_next_flush(monkeypatch, signal.SIGTERM)
            raise KeyboardInterrupt  # Ctrl-C first; SIGTERM arrives while __exit__ flushes
    assert caught.value.code == 128 + signal.SIGTERM
    assert isinstance(caught.value.__context__, KeyboardInterrupt)
    ds = read_run(tmp_path / "run")
    assert ds["step"].values.tolist() == list(range(6))
    assert ds.attrs["status"] == "interrupted"


def test_a_second_signal_while_one_waits_interrupts_at_once(default_handlers):
    reached = []
    with interrupts.orderly_exit():
        with pytest.raises(KeyboardInterrupt):
            with interrupts.deferred:  # e.g. a flush hanging on a stalled filesystem
                os.kill(os.getpid(), signal.SIGINT)
                reached.append("after the first")  # the first one waits
                os.kill(os.getpid(), signal.SIGINT)
                reached.append("after the second")
    assert reached == ["after the first"]
    with interrupts.orderly_exit():
        with interrupts.deferred:
            pass  # nothing is left waiting from before


def test_signal_handlers_come_back_on_exit_and_the_programs_own_are_left_alone(
    tmp_path, default_handlers
):
    model = tiny_model("baseline")
    with probe(model, tmp_path / "a") as p:
        assert signal.getsignal(signal.SIGTERM) is interrupts._handle
        with interrupts.orderly_exit():  # nested holders, e.g. train() around a probe
            train_steps(model, p, [batch(0)])
        assert signal.getsignal(signal.SIGTERM) is interrupts._handle
    for signum, handler in DEFAULTS.items():
        assert signal.getsignal(signum) == handler

    def own(signum, frame):
        pass

    signal.signal(signal.SIGTERM, own)
    signal.signal(signal.SIGINT, own)
    with probe(model, tmp_path / "b") as p:
        assert signal.getsignal(signal.SIGTERM) is own
        assert signal.getsignal(signal.SIGINT) is own
        train_steps(model, p, [batch(0)])
    assert signal.getsignal(signal.SIGTERM) is own
    assert read_run(tmp_path / "b").attrs["status"] == "finished"


def test_a_probe_in_another_thread_records_and_leaves_signals_alone(tmp_path, default_handlers):
    model = tiny_model("baseline")
    seen, errors = [], []

    def record() -> None:
        try:
            with probe(model, tmp_path / "run", flush_every=2) as p:
                seen.append(signal.getsignal(signal.SIGTERM))
                train_steps(model, p, [batch(i) for i in range(3)])
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    worker = threading.Thread(target=record)
    worker.start()
    worker.join(60)
    assert not errors and seen == [signal.SIG_DFL]
    assert read_run(tmp_path / "run")["step"].values.tolist() == [0, 1, 2]


# ----------------------------------------------------------------------------- real signals

USER_LOOP = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[4])
    import torch
    from attnres_probe.hooks import probe
    from probe_checks import batch, tiny_model, train_steps
    torch.set_num_threads(1)
    model = tiny_model("baseline")
    with probe(model, sys.argv[1], flush_every=int(sys.argv[2]), every=int(sys.argv[3])) as p:
        step = 0
        while True:
            train_steps(model, p, [batch(step % 16)])
            print(f"done {step}", flush=True)
            step += 1
    """
)


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Child:
    """A training subprocess that prints ``done K`` after finishing step K."""

    def __init__(self, args: list[str]):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            # As started from a terminal: a test runner launched in the background of a
            # non-interactive shell ignores SIGINT, and children would inherit that.
            preexec_fn=_default_signals,
        )
        self.out = b""

    def wait_for(self, ready, timeout: float = 60.0) -> None:
        """Read stdout until ``ready()`` holds (or the child dies: fail with its stderr)."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while not ready():
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"timed out; stdout so far: {self.out[-200:]!r}")
            if select.select([fd], [], [], 0.05)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.proc.wait()
                    pytest.fail(f"the child ended early: {self.proc.stderr.read().decode()}")
                self.out += chunk

    def last_done(self) -> int:
        done = [int(line.split()[1]) for line in self.out.decode().splitlines() if "done" in line]
        return max(done, default=-1)

    def finish(self, signum: int, timeout: float = 60.0) -> tuple[int, str]:
        """Send ``signum``; the exit status and stderr once the child has ended."""
        self.proc.send_signal(signum)
        try:
            rest, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"the child did not end within {timeout} s of {signum}")
        self.out += rest
        return self.proc.returncode, err.decode()


@pytest.mark.parametrize(
    "signum,every",
    [(signal.SIGINT, 1), (signal.SIGTERM, 1), (signal.SIGTERM, 3)],
    ids=["SIGINT", "SIGTERM", "SIGTERM-every-3"],
)
def test_an_interrupted_user_loop_keeps_every_step_it_reported_done(signum, every, tmp_path):
    run = tmp_path / "run"
    child = Child(["-c", USER_LOOP, str(run), "1000", str(every), str(TESTS)])
    child.wait_for(lambda: child.last_done() >= 8)
    assert committed_steps(run) == 0  # every recorded step so far is in the probe's buffer
    status, err = child.finish(signum)
    if signum == signal.SIGTERM:
        assert status == 128 + signal.SIGTERM, err  # an orderly exit, no traceback
        assert "Traceback" not in err
    else:
        assert status == -signal.SIGINT and "KeyboardInterrupt" in err  # Python's own ending
    last = child.last_done()
    ds = read_run(run)
    steps = ds["step"].values.tolist()
    reported = list(range(0, last + 1, every))
    assert steps[: len(reported)] == reported  # nothing the loop called done is lost
    assert steps == list(range(0, len(steps) * every, every)) and len(steps) <= len(reported) + 1
    assert ds.attrs["status"] == "interrupted"


def test_a_loop_killed_with_sigkill_loses_at_most_one_flush_interval(tmp_path):
    run, flush_every, every = tmp_path / "run", 4, 2
    child = Child(["-c", USER_LOOP, str(run), str(flush_every), str(every), str(TESTS)])
    child.wait_for(lambda: child.last_done() >= 21)
    child.proc.send_signal(signal.SIGKILL)  # lands at whatever step the loop has reached
    child.proc.wait()
    reported = list(range(0, child.last_done() + 1, every))  # recorded steps reported done
    ds = read_run(run)
    steps = ds["step"].values.tolist()
    assert steps == list(range(0, len(steps) * every, every))  # a prefix, no holes
    assert len(reported) - len(steps) < flush_every  # less than one flush of recorded steps
    assert len(steps) % flush_every == 0  # whole flushes only
    assert ds.attrs["status"] == "interrupted"


TRAIN_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from attnres_probe.data import ByteCorpus
    from attnres_probe.models import ModelConfig
    from attnres_probe.train import TrainConfig, train
    torch.set_num_threads(1)
    model_cfg = ModelConfig(residual="block", n_layers=2, d_model=16, n_heads=2, n_blocks=2,
                            max_seq_len=16)
    train_cfg = TrainConfig(steps=100_000, batch_size=2, seq_len=16, warmup_steps=2)
    train(model_cfg, train_cfg, sys.argv[1], corpus=ByteCorpus.load(sys.argv[2]),
          on_step=lambda step, loss, tps: print(f"done {step}", flush=True))
    """
)


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("the quick brown fox jumps over the lazy dog\n" * 400)
    return path


def test_train_under_sigterm_flushes_every_step_and_writes_no_checkpoint(tmp_path, corpus):
    run = tmp_path / "run"
    child = Child(["-c", TRAIN_SCRIPT, str(run), str(corpus)])
    child.wait_for(lambda: child.last_done() >= 20)  # on_step reports every 10th step
    status, err = child.finish(signal.SIGTERM)
    assert status == 128 + signal.SIGTERM and "Traceback" not in err, err
    ds = read_run(run)
    n = ds.sizes["step"]
    assert n >= child.last_done() + 1
    assert ds["step"].values.tolist() == list(range(n))
    assert ds.attrs["status"] == "interrupted"
    assert not (run / "checkpoint.safetensors").exists()


def test_the_train_command_under_sigterm_exits_143_with_the_run_flushed(tmp_path, corpus):
    run = tmp_path / "run"
    args = ["-m", "attnres_probe.cli", "train", "--residual", "full", "--layers", "2"]
    args += ["--d-model", "16", "--n-heads", "2", "--steps", "100000", "--batch-size", "2"]
    args += ["--seq-len", "16", "--data", str(corpus), "--out", str(run)]
    child = Child(args)
    child.wait_for(lambda: committed_steps(run) >= 64)  # the first flush of 64 steps is stored
    seen = committed_steps(run)
    status, err = child.finish(signal.SIGTERM)
    assert status == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    ds = read_run(run)
    n = ds.sizes["step"]
    assert n >= seen and ds["step"].values.tolist() == list(range(n))
    assert ds.attrs["status"] == "interrupted"
    assert not (run / "checkpoint.safetensors").exists()


def test_train_puts_the_signal_handlers_back_when_it_ends(tmp_path, corpus):
    from attnres_probe.data import ByteCorpus
    from attnres_probe.models import ModelConfig
    from attnres_probe.train import TrainConfig, train

    before = signal.getsignal(signal.SIGTERM)
    model_cfg = ModelConfig(residual="baseline", n_layers=1, d_model=16, n_heads=2, max_seq_len=16)
    train_cfg = TrainConfig(steps=3, batch_size=2, seq_len=16, warmup_steps=1, eval_batches=1)
    torch.manual_seed(0)
    result = train(model_cfg, train_cfg, tmp_path / "run", corpus=ByteCorpus.load(corpus))
    assert len(result.losses) == 3
    assert signal.getsignal(signal.SIGTERM) == before
    assert read_run(tmp_path / "run").attrs["status"] == "finished"
