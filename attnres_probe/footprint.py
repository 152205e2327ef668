"""What a step of a model takes from the machine: the memory it needs (estimated before
anything is allocated) and the torch threads it should run with.

:func:`check_memory` refuses a request whose estimate exceeds the memory available now, with
the number and the limit; :func:`default_threads` picks one thread for a small model (its
matmuls are too small to split) and otherwise one per core not busy.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch

from attnres_probe.devices import device_memory, usable_device
from attnres_probe.models import ModelConfig, build_model
from attnres_probe.resources import OptionError, Threads, check_fits_memory, pick_threads

# One thread is fastest when the widest matmul of a step (tokens × d_model × MLP hidden)
# is below this many multiply-adds: the operations are too small to split.
SMALL_MATMUL = 2**26
LOSS_BYTES_PER_STEP = 4 + 32  # the float32 slot while training, a Python float in the result


@functools.lru_cache(maxsize=16)
def _model_size(cfg: ModelConfig) -> tuple[int, int]:
    """(parameter count, buffer bytes) of the model ``cfg`` describes, from a copy built on the
    meta device (shapes only: nothing is allocated)."""
    with torch.device("meta"):
        model = build_model(cfg)
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return params, buffers


def _stacked_sources(cfg: ModelConfig, training: bool) -> int:
    """Depth sources an AttnRes model holds stacked at once: kept for backward in training
    (every site's stack), or the widest stack alone in evaluation."""
    if cfg.residual == "full":
        n = cfg.n_sublayers
        return n * (n + 1) // 2 if training else n + 1
    if cfg.residual == "block":
        nb = cfg.n_blocks
        return cfg.sublayers_per_block * nb * (nb + 1) // 2 if training else nb + 1
    return 0


def _activation_bytes(cfg: ModelConfig, batch_size: int, seq_len: int, training: bool) -> int:
    tokens = batch_size * seq_len
    one = tokens * cfg.d_model * 4  # one (B, T, d_model) float32 tensor
    hidden = tokens * cfg.ffn_hidden * 4  # one MLP hidden tensor
    logits = tokens * cfg.vocab_size * 4
    batch = 2 * batch_size * (seq_len + 1) * 8  # the int64 batch and its parts
    stacked = _stacked_sources(cfg, training)
    if training:  # kept for backward: per layer ~16 stream-sized tensors and 6 MLP-hidden ones
        per_layer = 16 * one + 6 * hidden
        return cfg.n_layers * per_layer + 4 * stacked * one + 12 * logits + batch
    return 10 * one + 2 * hidden + 6 * stacked * one + 5 * logits + batch


def estimate_memory(
    cfg: ModelConfig, batch_size: int, seq_len: int, training: bool = True, steps: int = 0
) -> int:
    """Bytes a training step (or an evaluation, ``training=False``) of ``batch_size`` sequences
    of ``seq_len`` bytes takes at its peak, model, optimiser state and ``steps`` recorded
    losses included: float32 on the CPU, calibrated against measured peaks of this model family
    (1.2-1.5x their measured peak)."""
    params, buffers = _model_size(cfg)
    state = (16 if training else 4) * params  # weights, gradients, AdamW's two moments
    return (
        state
        + buffers
        + _activation_bytes(cfg, batch_size, seq_len, training)
        + steps * LOSS_BYTES_PER_STEP
    )


def check_memory(
    cfg: ModelConfig,
    batch_size: int,
    seq_len: int,
    training: bool = True,
    steps: int = 0,
    device: str | torch.device = "cpu",
) -> int:
    """The estimated bytes (:func:`estimate_memory`); OptionError with the number and the limit
    when they exceed the memory available on ``device`` now. Nothing is allocated."""
    have = device_memory(usable_device(device))
    doing = "training" if training else "evaluating"
    what = (
        f"{doing} a model of {cfg.n_layers} layers, d_model {cfg.d_model}, on --batch-size "
        f"{batch_size} × --seq-len {seq_len}" + (f" for {steps} steps" if steps else "")
    )
    losses = steps * LOSS_BYTES_PER_STEP
    # The activations and the loss buffer alone first: an absurd request (a depth, batch or
    # length of millions) is refused before even a shape-only model is built.
    rough = _activation_bytes(cfg, batch_size, seq_len, training) + losses
    fix = "lower --steps" if 2 * losses > rough else "lower --batch-size or --seq-len"
    check_fits_memory(rough + 64 * 1024 * cfg.n_layers, what, fix, have)
    needed = estimate_memory(cfg, batch_size, seq_len, training, steps)
    check_fits_memory(needed, what, fix, have)
    return needed


def check_sequence(cfg: ModelConfig, seq_len: int) -> None:
    """OptionError when ``seq_len`` exceeds the model's ``max_seq_len`` (never cut silently)."""
    if seq_len > cfg.max_seq_len:
        raise OptionError(
            f"--seq-len {seq_len} exceeds the model's max_seq_len={cfg.max_seq_len}; use "
            f"--seq-len {cfg.max_seq_len} or less"
        )


def default_threads(model_cfg: ModelConfig, batch_size: int, seq_len: int) -> Threads:
    """The torch threads to use for this model: one for a small model (its matmuls are too
    small to split), else one per core not busy (CPU affinity minus the load average)."""
    widest = batch_size * seq_len * model_cfg.d_model * model_cfg.ffn_hidden
    return pick_threads(small=widest < SMALL_MATMUL)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` inside the ``with``, put back after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
