"""The small training loop behind ``attnres-probe train``, the demo and the sample runs.

Byte-level language modelling with AdamW, warm-up then cosine decay, gradient clipping; the
probe records every ``record_every`` steps into the run directory, and a checkpoint is saved
at the end. Deterministic for a seed on a given machine.

Interrupted by Ctrl-C or SIGTERM, it stops in order: the probe flushes every buffered step and
marks the run interrupted, no checkpoint is written, and the interrupt goes on
(``KeyboardInterrupt``, or ``SystemExit(143)`` for SIGTERM; see ``hooks.interrupts``).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from attnres_probe.checkpoint import save_checkpoint
from attnres_probe.data import ByteCorpus
from attnres_probe.hooks import probe
from attnres_probe.hooks.interrupts import deferred, orderly_exit
from attnres_probe.models import ModelConfig, build_model


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
        for name in ("steps", "batch_size", "seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr} must be positive")
        if self.record_every < 0:
            raise ValueError(f"record_every={self.record_every} must be >= 0 (0 disables)")


@dataclass
class TrainResult:
    run_dir: Path
    losses: list[float] = field(default_factory=list)
    held_out_loss: float = float("nan")
    seconds: float = 0.0
    steps_per_s: float = 0.0
    tokens_per_s: float = 0.0


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


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    run_dir: str | Path,
    on_step: StepCallback | None = None,
    device: str = "cpu",
    corpus: ByteCorpus | None = None,
) -> TrainResult:
    """Train one model, recording it with the probe into ``run_dir``; returns its losses."""
    with orderly_exit():  # SIGTERM unwinds (the probe flushes) instead of ending the process
        return _train(model_cfg, train_cfg, Path(run_dir), on_step, device, corpus)


def _train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    run_dir: Path,
    on_step: StepCallback | None,
    device: str,
    corpus: ByteCorpus | None,
) -> TrainResult:
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(train_cfg.seed)
    corpus = corpus or ByteCorpus.load(train_cfg.data)
    if train_cfg.seq_len > model_cfg.max_seq_len:
        raise ValueError(
            f"seq_len={train_cfg.seq_len} exceeds max_seq_len={model_cfg.max_seq_len}; "
            "lower --seq-len"
        )
    model = build_model(model_cfg).to(device)
    opt = make_optimizer(model, train_cfg)
    data_gen = torch.Generator().manual_seed(train_cfg.seed)
    result = TrainResult(run_dir=run_dir)
    tokens_per_step = train_cfg.batch_size * train_cfg.seq_len

    recorder = _open_probe(model, run_dir, model_cfg, train_cfg, corpus)
    start = time.perf_counter()
    losses: list[torch.Tensor] = []
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
            losses.append(loss.detach())
            if on_step is not None and (step % 10 == 0 or step == train_cfg.steps - 1):
                elapsed = time.perf_counter() - start
                on_step(step, loss.item(), (step + 1) * tokens_per_step / max(elapsed, 1e-9))
    result.seconds = time.perf_counter() - start
    result.losses = torch.stack(losses).tolist()
    result.steps_per_s = train_cfg.steps / result.seconds
    result.tokens_per_s = result.steps_per_s * tokens_per_step
    result.held_out_loss = evaluate(
        model, corpus, train_cfg.eval_batches, train_cfg.batch_size, train_cfg.seq_len
    )
    _save(model, model_cfg, train_cfg, corpus, result)
    return result


def _open_probe(model, run_dir, model_cfg, train_cfg, corpus):
    if train_cfg.record_every == 0:
        return contextlib.nullcontext()
    attrs = {"train_config": json.dumps(asdict(train_cfg)), "corpus": corpus.source}
    return probe(model, run_dir, every=train_cfg.record_every, attrs=attrs)


def _save(model, model_cfg, train_cfg, corpus, result: TrainResult) -> None:
    extra = {
        "train_config": asdict(train_cfg),
        "corpus": corpus.source,
        "held_out_loss": result.held_out_loss,
        "final_train_loss": result.losses[-1],
        "seconds": result.seconds,
        "steps_per_s": result.steps_per_s,
    }
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with deferred:  # an interrupt waits for the checkpoint files to be whole
        save_checkpoint(result.run_dir, state, model_cfg.to_dict(), extra)
