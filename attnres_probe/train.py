"""The small training loop behind ``attnres-probe train``, the demo and the sample runs.

Byte-level language modelling with AdamW, warm-up then cosine decay, gradient clipping; the
probe records every ``record_every`` steps into the run directory, and a checkpoint is saved
at the end. Deterministic for a seed on a given machine and thread count.

Everything is checked before any work and before any folder is made: the configuration, the
corpus's size, the memory the request needs (``footprint.check_memory``), and the run directory (an
existing run is replaced only when asked, and never while another process writes it). Each
recording gets a ``recording_id``; the checkpoint names it, so a checkpoint is never paired
with another training's recording. What is kept per step is O(1) bytes (a float32 slot of a
preallocated buffer, read once at the end: no host sync per step).

Interrupted by Ctrl-C or SIGTERM, it stops in order: the probe flushes every buffered step and
marks the run interrupted, no checkpoint is written, and the interrupt goes on
(``KeyboardInterrupt``, or ``SystemExit(143)`` for SIGTERM; see ``hooks.interrupts``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from attnres_probe.checkpoint import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    load_model,
    model_config,
    read_checkpoint_config,
    recording_id,
    save_checkpoint,
    training_config,
)
from attnres_probe.data import ByteCorpus
from attnres_probe.devices import usable_device
from attnres_probe.footprint import check_memory, check_sequence, default_threads, torch_threads
from attnres_probe.hooks import probe
from attnres_probe.hooks.interrupts import deferred, orderly_exit
from attnres_probe.models import ModelConfig, build_model
from attnres_probe.resources import check_threads
from attnres_probe.store import STORE_NAME, run_info

MAX_LR = 1.0  # AdamW diverges far below this; larger values are typos (1e300 overflows)
MAX_SEED = 2**64 - 1  # torch's seed range
RUN_PARTS = (STORE_NAME, CHECKPOINT_FILE, CONFIG_FILE)


class RunExistsError(ValueError):
    """The run directory already holds a run (or another process writes one there)."""


class TrainError(ValueError):
    """Training cannot finish as asked; the message says why and what to do."""


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 200
    batch_size: int = 16
    seq_len: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup_steps: int = 20
    grad_clip: float = 1.0
    seed: int = 0
    data: str | None = None  # None: the default corpus
    record_every: int = 1  # 0 disables the probe
    eval_batches: int = 8

    def __post_init__(self) -> None:
        for name, least in (
            ("steps", 1),
            ("batch_size", 1),
            ("seq_len", 1),
            ("eval_batches", 1),
            ("warmup_steps", 0),
            ("record_every", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                what = "a positive integer" if least else ">= 0 (0 disables)"
                if name == "warmup_steps":
                    what = "an integer >= 0"
                raise ValueError(f"{name}={value!r} must be {what}")
        if not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr):
            raise ValueError(f"lr={self.lr} is not a finite number; use e.g. 3e-3")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr} must be positive; use e.g. 3e-3")
        if self.lr > MAX_LR:
            raise ValueError(
                f"lr={self.lr:g} is above {MAX_LR:g}, where AdamW only diverges; use e.g. 3e-3"
            )
        if not math.isfinite(self.weight_decay) or not 0 <= self.weight_decay * self.lr < 1:
            raise ValueError(
                f"weight_decay={self.weight_decay} must be >= 0 with lr·weight_decay < 1; "
                "use e.g. 0.1"
            )
        if not math.isfinite(self.grad_clip) or self.grad_clip <= 0:
            raise ValueError(f"grad_clip={self.grad_clip} must be a positive number; use e.g. 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed={self.seed!r} must be an integer")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed={self.seed} must be between 0 and {MAX_SEED} (2**64 - 1)")


@dataclass
class TrainResult:
    run_dir: Path
    losses: list[float] = field(default_factory=list)
    held_out_loss: float = float("nan")
    seconds: float = 0.0
    steps_per_s: float = 0.0
    tokens_per_s: float = 0.0
    threads: int = 1
    recording_id: str | None = None  # None: trained without a recording


StepCallback = Callable[[int, float, float], None]  # (step, loss, tokens_per_s)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to 10 % of it."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def lm_loss(model: torch.nn.Module, batch: torch.Tensor, **forward_kwargs) -> torch.Tensor:
    """Next-byte cross-entropy of a (B, T+1) batch."""
    logits = model(batch[:, :-1], **forward_kwargs)
    return F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    corpus: ByteCorpus,
    batches: int,
    batch_size: int,
    seq_len: int,
    seed: int = 1234,
    **forward_kwargs,
) -> float:
    """Mean held-out loss over ``batches`` fixed batches (same seed -> same batches)."""
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    total = 0.0
    for _ in range(batches):
        batch = corpus.batch("held_out", batch_size, seq_len, g).to(device)
        total += lm_loss(model, batch, **forward_kwargs).item()
    model.train(was_training)
    return total / batches


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


# ----------------------------------------------------------------------------- before any work


def check_training(
    model_cfg: ModelConfig, train_cfg: TrainConfig, device: str | torch.device = "cpu"
) -> None:
    """Every option of a training checked before any work: the sequence length against the
    model, the memory the run needs against what is available (OptionError)."""
    check_sequence(model_cfg, train_cfg.seq_len)
    check_memory(model_cfg, train_cfg.batch_size, train_cfg.seq_len, True, train_cfg.steps, device)


def check_evaluation(
    model_cfg: ModelConfig, batch_size: int, seq_len: int, device: str | torch.device = "cpu"
) -> None:
    """The same for evaluating a trained model (pruning): OptionError before any allocation."""
    check_sequence(model_cfg, seq_len)
    check_memory(model_cfg, batch_size, seq_len, training=False, device=device)


def load_for_evaluation(
    run_dir: str | Path, batch_size: int, seq_len: int, device: str = "cpu"
) -> tuple[torch.nn.Module, ByteCorpus]:
    """A run's trained model (:func:`checkpoint.load_model`) and its corpus, for held-out
    evaluations of ``batch_size`` × ``seq_len``: the sizes are checked against the model and the
    memory available, and the corpus against ``seq_len``, before the weights are read."""
    document = read_checkpoint_config(run_dir)
    check_evaluation(model_config(document, run_dir), batch_size, seq_len, device)
    corpus = ByteCorpus.load(training_config(document).get("data"))
    corpus.check_fits(seq_len)
    return load_model(run_dir, device=device), corpus


def run_parts(run_dir: Path) -> list[str]:
    """The parts of a run (recording, checkpoint, configuration) that ``run_dir`` holds."""
    return [name for name in RUN_PARTS if (run_dir / name).exists()]


def check_run_dir(run_dir: str | Path, overwrite: bool = False) -> None:
    """RunExistsError unless a new run may be trained into ``run_dir``: it holds no run, or
    ``overwrite`` and the run is not being written by another process and holds nothing else
    (the whole folder is moved aside)."""
    run_dir = Path(run_dir)
    parts = run_parts(run_dir)
    if not parts:
        return
    if (run_dir / STORE_NAME).exists() and run_info(run_dir).status == "live":
        raise RunExistsError(
            f"--out {run_dir} is being recorded by another process right now; wait until it "
            "finishes or pick another --out"
        )
    if not overwrite:
        raise RunExistsError(
            f"--out {run_dir} already holds a run ({', '.join(parts)}); pass --overwrite to "
            "replace it (the old run is moved aside first) or pick another --out"
        )
    others = sorted(p.name for p in run_dir.iterdir() if p.name not in RUN_PARTS)
    others = [name for name in others if not name.startswith(".")]
    if others:
        raise RunExistsError(
            f"--out {run_dir} holds {others[0]!r} beside the run; --overwrite replaces whole "
            "run folders only: move it out or pick another --out"
        )


def move_run_aside(run_dir: Path) -> Path:
    """Rename the run folder ``run_dir`` to a hidden sibling in one step (a reader sees the old
    run or none, never part of it); returns where it went. The caller removes it once the new
    run is complete."""
    aside = run_dir.parent / f".{run_dir.name}.replaced-{time.strftime('%Y%m%dT%H%M%S')}"
    aside = aside.with_name(f"{aside.name}-{os.getpid()}")
    os.rename(run_dir, aside)
    return aside


# ----------------------------------------------------------------------------- training


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    run_dir: str | Path,
    on_step: StepCallback | None = None,
    device: str = "cpu",
    corpus: ByteCorpus | None = None,
    overwrite: bool = False,
    threads: int | None = None,
    on_replace: Callable[[Path], None] | None = None,
) -> TrainResult:
    """Train one model, recording it with the probe into ``run_dir``; returns its losses.

    Refused before any work (nothing created): options the model or the machine cannot take
    (OptionError), a corpus too short for ``seq_len`` (DataError), a ``run_dir`` that already
    holds a run unless ``overwrite`` (then the old run is moved aside first, ``on_replace`` is
    told where, and it is deleted when the new run is complete) and one another process is
    recording (RunExistsError). ``threads``: torch threads while training (None picks with
    ``footprint.default_threads``; the previous count comes back after).
    """
    run_dir = Path(run_dir)
    dev = usable_device(device)
    check_threads(threads)
    if threads is None:
        threads = default_threads(model_cfg, train_cfg.batch_size, train_cfg.seq_len).n
    check_training(model_cfg, train_cfg, dev)
    corpus = corpus or ByteCorpus.load(train_cfg.data)
    corpus.check_fits(train_cfg.seq_len)
    check_run_dir(run_dir, overwrite)
    aside = None
    with orderly_exit(), torch_threads(threads):  # SIGTERM unwinds: the probe flushes
        if overwrite and run_parts(run_dir):
            aside = move_run_aside(run_dir)
            if on_replace is not None:
                on_replace(aside)
        result = _train(model_cfg, train_cfg, run_dir, on_step, dev, corpus, threads)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return result


def _train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    run_dir: Path,
    on_step: StepCallback | None,
    device: torch.device,
    corpus: ByteCorpus,
    threads: int,
) -> TrainResult:
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(train_cfg.seed)
    model = build_model(model_cfg).to(device)
    opt = make_optimizer(model, train_cfg)
    data_gen = torch.Generator().manual_seed(train_cfg.seed)
    recording = uuid.uuid4().hex if train_cfg.record_every else None
    result = TrainResult(run_dir=run_dir, threads=threads, recording_id=recording)
    tokens_per_step = train_cfg.batch_size * train_cfg.seq_len

    recorder = _open_probe(model, run_dir, train_cfg, corpus, recording, threads)
    # One float32 slot per step, filled on the device and read once at the end: O(1) bytes per
    # step and no host sync (a list of 0-d loss tensors grows by far more than their 4 bytes).
    losses = torch.empty(train_cfg.steps, dtype=torch.float32, device=device)
    start = time.perf_counter()
    with recorder as p:
        for step in range(train_cfg.steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, train_cfg)
            batch = corpus.batch("train", train_cfg.batch_size, train_cfg.seq_len, data_gen)
            loss = lm_loss(model, batch.to(device))
            loss.backward()
            if p is not None:
                p.step(loss=loss)
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses[step] = loss.detach()
            if on_step is not None and (step % 10 == 0 or step == train_cfg.steps - 1):
                elapsed = time.perf_counter() - start
                on_step(step, loss.item(), (step + 1) * tokens_per_step / max(elapsed, 1e-9))
    result.seconds = time.perf_counter() - start
    result.losses = losses.tolist()
    del losses
    result.steps_per_s = train_cfg.steps / result.seconds
    result.tokens_per_s = result.steps_per_s * tokens_per_step
    result.held_out_loss = evaluate(
        model, corpus, train_cfg.eval_batches, train_cfg.batch_size, train_cfg.seq_len
    )
    _save(model, model_cfg, train_cfg, corpus, result)
    return result


def _open_probe(model, run_dir, train_cfg, corpus, recording: str | None, threads: int):
    if recording is None:
        return contextlib.nullcontext()
    attrs = {
        "train_config": json.dumps(asdict(train_cfg)),
        "corpus": corpus.source,
        "recording_id": recording,
        "threads": threads,
    }
    return probe(model, run_dir, every=train_cfg.record_every, attrs=attrs)


def _save(model, model_cfg, train_cfg, corpus, result: TrainResult) -> None:
    run_dir = result.run_dir
    if (run_dir / STORE_NAME).exists():
        try:
            found = recording_id(run_dir)
        except ValueError:  # unreadable: it cannot be shown to be ours
            found = "unreadable"
        if found != result.recording_id:
            raise TrainError(
                f"the recording in {run_dir} was replaced by another process while this model "
                "trained, so its checkpoint is not saved beside it; train again into another --out"
            )
    extra = {
        "train_config": asdict(train_cfg),
        "corpus": corpus.source,
        "held_out_loss": result.held_out_loss,
        "final_train_loss": result.losses[-1],
        "seconds": result.seconds,
        "steps_per_s": result.steps_per_s,
        "threads": result.threads,
    }
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with deferred:  # an interrupt waits for the checkpoint files to be whole
        save_checkpoint(run_dir, state, model_cfg.to_dict(), extra, result.recording_id)
