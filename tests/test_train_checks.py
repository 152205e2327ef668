"""Training and pruning check everything before they start, and keep O(1) memory per step.

Every option (learning rate, seed, threads, sizes) and the corpus's size are checked before any
work and before any folder is made; the memory a request needs is estimated and refused with
the number and the limit; nothing is changed silently. The torch thread count is picked for
the model size and the cores not busy, printed first, and put back afterwards.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from synthetic_runs import small_corpus
from test_cli_errors import assert_one_line, heavy_work  # noqa: F401 - a fixture
from tiny_training import TINY, TINY_OPTIONS, invoke, tiny_train

from attnres_probe.data import DataError
from attnres_probe.footprint import default_threads
from attnres_probe.models import ModelConfig
from attnres_probe.resources import OptionError, pick_threads
from attnres_probe.train import TrainConfig, train

# ----------------------------------------------------------------------------- memory per step


def test_training_keeps_no_tensor_per_step(tmp_path):
    """A 0-d loss kept per step holds far more than its 4 bytes alive; the loop keeps none."""
    counts = {}

    def on_step(step: int, loss: float, tokens_per_s: float) -> None:
        if step in (10, 150):
            counts[step] = sum(1 for o in gc.get_objects() if type(o) is torch.Tensor)

    cfg = TrainConfig(steps=160, batch_size=2, seq_len=16, warmup_steps=1, record_every=0)
    cfg = TrainConfig(**{**cfg.__dict__, "eval_batches": 1, "data": small_corpus()})
    result = train(TINY, cfg, tmp_path / "run", on_step=on_step)
    assert counts[150] - counts[10] <= 2, counts
    assert len(result.losses) == 160 and all(isinstance(x, float) for x in result.losses)


PEAK_SCRIPT = textwrap.dedent(
    """
    import gc, json, sys
    import torch
    torch.set_num_threads(1)
    from attnres_probe.models import ModelConfig, build_model
    from attnres_probe.footprint import estimate_memory
    from attnres_probe.train import TrainConfig, lm_loss, make_optimizer

    def status(field):  # bytes, from /proc/self/status
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    kind, training = sys.argv[1], sys.argv[2] == "train"
    small = ModelConfig(residual=kind, n_layers=2, d_model=16, n_heads=2, n_blocks=2)
    warm = build_model(small)  # lazily loaded kernels and allocator pools are not the step's
    lm_loss(warm, torch.randint(0, 256, (1, 9))).backward()
    del warm
    gc.collect()
    cfg = ModelConfig(residual=kind, n_layers=4, d_model=64, n_heads=4, n_blocks=4,
                      max_seq_len=256)
    # As in use, the estimate comes first (its shape-only model also loads the modules the
    # first step would import: a one-time cost already in the process when the check runs).
    estimate = estimate_memory(cfg, 8, 256, training)
    start = status("RssAnon")
    model = build_model(cfg)
    opt = make_optimizer(model, TrainConfig())
    batch = torch.randint(0, 256, (8, 257))
    for _ in range(2):
        if training:
            lm_loss(model, batch).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                lm_loss(model, batch)
    # The peak of anonymous memory: the peak RSS less the library pages mapped by then (they
    # only grow, and a first use of a new shape pages in code that is no allocation).
    peak = status("VmHWM") - status("RssFile") - status("RssShmem")
    print(json.dumps({"measured": peak - start, "estimate": estimate}))
    """
)


@pytest.mark.parametrize("kind,mode", [("full", "train"), ("baseline", "eval")])
def test_the_memory_estimate_is_above_the_measured_peak_and_within_2x(kind, mode):
    """Measured in a fresh process: the peak growth of anonymous memory over two steps."""
    done = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, kind, mode],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["measured"] > 5 * 2**20, got  # a step that allocates something to measure
    assert got["measured"] <= got["estimate"] <= 2 * got["measured"], got


# ----------------------------------------------------------------------------- options first

TRAIN_USAGE = [
    (("--lr", "nan"), "lr=nan is not a finite number"),
    (("--lr", "inf"), "lr=inf is not a finite number"),
    (("--lr", "1e300"), "lr=1e+300 is above 1"),
    (("--seed", str(2**64)), "seed=18446744073709551616 must be between 0 and"),
    (("--seed", "-1"), "seed=-1 must be between 0 and"),
    (("--threads", "0"), "--threads 0 is not a thread count here"),
    (("--threads", "100000"), "--threads 100000 is not a thread count here"),
    (("--seq-len", "100000000"), "GiB are available; lower --batch-size or --seq-len"),
    (("--batch-size", "100000000"), "GiB are available; lower --batch-size or --seq-len"),
    (("--steps", str(10**15)), "GiB are available; lower --steps"),
    (("--layers", "1000000"), "GiB are available"),
]


@pytest.mark.parametrize("args,message", TRAIN_USAGE, ids=[" ".join(a) for a, _ in TRAIN_USAGE])
def test_train_refuses_bad_options_before_any_work_or_folder(heavy_work, tmp_path, args, message):  # noqa: F811
    out = tmp_path / "run"
    result = invoke("train", "--out", out, "--data", small_corpus(), *args)
    assert_one_line(result, 2, message)
    assert heavy_work == [] and not out.exists()


@pytest.mark.parametrize(
    "size,message",
    [
        (1000, "the held-out part (the last 5 %) of the corpus"),
        (2, "the training part of the corpus"),
    ],
)
def test_a_corpus_too_short_for_the_sequences_is_refused_before_any_folder(
    heavy_work,  # noqa: F811
    tmp_path,
    size,
    message,
):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"x" * size)
    for command in ("train", "demo"):
        out = tmp_path / command
        result = invoke(command, "--data", corpus, "--out", out)
        line = assert_one_line(result, 1, message, str(corpus), "--seq-len")
        assert "at least 1301 bytes" in line  # the default --seq-len 64 needs that much
        assert heavy_work == [] and not out.exists()


def test_the_library_refuses_a_sequence_longer_than_the_model_before_any_folder(tmp_path):
    cfg = TrainConfig(steps=2, batch_size=2, seq_len=32, data=small_corpus())
    with pytest.raises(OptionError, match="--seq-len 32 exceeds the model's max_seq_len=16"):
        train(TINY, cfg, tmp_path / "run")
    with pytest.raises(DataError, match="has 0 bytes|has 1 bytes"):
        empty = tmp_path / "two.txt"
        empty.write_bytes(b"ab")
        train(TINY, TrainConfig(steps=2, batch_size=2, seq_len=8, data=str(empty)), tmp_path / "r")
    assert not (tmp_path / "run").exists() and not (tmp_path / "r").exists()


def test_demo_refuses_bad_options_before_any_work(heavy_work, tmp_path):  # noqa: F811
    for args, message in (
        (("--seed", str(2**64)), "must be between 0 and"),
        (("--threads", "0"), "--threads 0"),
    ):
        out = tmp_path / "demo"
        assert_one_line(invoke("demo", "--quick", "--out", out, *args), 2, message)
        assert heavy_work == [] and not out.exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("tiny") / "run"
    tiny_train(run)
    return run


PRUNE_USAGE = [
    (("--seq-len", "100000"), "--seq-len 100000 exceeds the model's max_seq_len=16"),
    (("--batch-size", "100000000"), "GiB are available; lower --batch-size or --seq-len"),
    (("--device", "meta"), "the meta device holds shapes, not numbers"),
    (("--device", "cpu:7"), "the CPU is a single device"),
]


@pytest.mark.parametrize("args,message", PRUNE_USAGE, ids=[" ".join(a) for a, _ in PRUNE_USAGE])
def test_prune_refuses_sizes_and_devices_it_cannot_use_instead_of_changing_them(
    heavy_work,  # noqa: F811
    tiny_run,
    args,
    message,
):
    before = sorted(p.name for p in (tiny_run / "recording.zarr").iterdir())
    assert_one_line(invoke("prune", tiny_run, *args), 2, message)
    assert heavy_work == []
    assert sorted(p.name for p in (tiny_run / "recording.zarr").iterdir()) == before


# ----------------------------------------------------------------------------- threads


def test_threads_follow_the_model_size_and_the_cores_not_busy():
    assert pick_threads(small=True, cores=16, load=0.0).n == 1
    assert pick_threads(small=False, cores=8, load=3.2).n == 5
    assert pick_threads(small=False, cores=2, load=6.0).n == 1  # a busy machine
    assert pick_threads(small=False, cores=4, load=0.0).n == 4
    demo_size = ModelConfig(n_layers=16, d_model=64, n_heads=4, n_blocks=8)
    assert default_threads(demo_size, 8, 64).n == 1
    wide = ModelConfig(n_layers=8, d_model=512, n_heads=8)
    assert "cores" in default_threads(wide, 16, 256).reason  # picked by the cores


def test_train_prints_its_thread_count_first_and_puts_torch_back(tmp_path):
    before = torch.get_num_threads()
    args = ("train", *TINY_OPTIONS, "--steps", "2", "--data", small_corpus())
    result = invoke(*args, "--out", tmp_path / "run", "--every", "0")
    assert result.exit_code == 0, result.output
    first = result.stderr.splitlines()[0]
    assert first.startswith("training with 1 torch thread (a small model"), first
    assert json.loads((tmp_path / "run" / "config.json").read_text())["extra"]["threads"] == 1
    seen = []
    tiny_train(tmp_path / "two", steps=2, record_every=0)
    train(
        TINY,
        TrainConfig(steps=1, batch_size=2, seq_len=16, data=small_corpus(), eval_batches=1),
        tmp_path / "three",
        threads=2,
        on_step=lambda *a: seen.append(torch.get_num_threads()),
    )
    assert seen == [2] and torch.get_num_threads() == before


def test_recorded_statistics_do_not_depend_on_the_thread_count_beyond_rounding(tmp_path):
    from probe_checks import read_run

    model = ModelConfig(residual="block", n_layers=2, d_model=64, n_heads=4, n_blocks=2)
    cfg = TrainConfig(steps=3, batch_size=4, seq_len=32, data=small_corpus(), eval_batches=1)
    runs = {n: tmp_path / f"threads{n}" for n in (1, 2)}
    for n, run in runs.items():
        train(model, cfg, run, threads=n)
    one, two = read_run(runs[1]), read_run(runs[2])
    assert set(one.data_vars) == set(two.data_vars)
    for name in one.data_vars:
        torch.testing.assert_close(
            torch.as_tensor(two[name].values),
            torch.as_tensor(one[name].values),
            rtol=1e-4,
            atol=1e-6,
            equal_nan=True,
            msg=name,
        )


def test_the_sample_run_script_trains_with_one_thread():
    import runpy

    path = Path(__file__).resolve().parents[1] / "scripts" / "make_sample_runs.py"
    script = runpy.run_path(str(path), run_name="make_sample_runs")
    assert "--threads 1" in script["cli_command"]("block", 0, Path("sample_runs"))
    assert script["THREADS"] == 1
