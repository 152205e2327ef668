"""The probe as a Lightning callback (needs ``lightning``:
``pip install "attnres-probe[lightning]"``).

    from attnres_probe.hooks.lightning import ProbeCallback

    trainer = lightning.Trainer(max_steps=1000, callbacks=[ProbeCallback("runs/exp1", every=10)])
    trainer.fit(module, loader)

The probe attaches when fitting starts to the model the LightningModule wraps (the one child
holding all its weights; else the LightningModule itself, whose decoder layers are found inside
it, or named with ``layers=``) and closes the run when fitting ends, or, marked
interrupted, when it raises. Steps are optimizer steps: with ``accumulate_grad_batches`` every
micro-batch adds to the step, and ``every`` counts optimizer steps. Lightning calls
``on_before_optimizer_step`` before it clips, so ``param_grad_norm`` is the unclipped norm. The
recorded loss is the mean of the step's micro-batch losses (the ``training_step`` loss). The
run's attributes hold the Trainer's settings (``trainer_settings``, JSON). Under a distributed
strategy every rank runs the callback and rank 0 writes, as for the probe itself.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from lightning.pytorch import Callback

from attnres_probe.hooks.probe import CallbackSettings, Probe

__all__ = ["ProbeCallback"]


class ProbeCallback(CallbackSettings, Callback):
    """Record the LightningModule a ``lightning.Trainer`` fits into the run at ``run_path``
    every ``every`` optimizer steps; ``probe_options`` go to
    :class:`attnres_probe.hooks.Probe` (``layers``, ``attrs``, ``strict``, ``flush_every``, ...)."""

    def __init__(self, run_path: str | os.PathLike, every: int = 1, **probe_options: Any):
        super().__init__(run_path, every, **probe_options)
        self._loss: torch.Tensor | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        settings = {
            "max_steps": trainer.max_steps,
            "max_epochs": trainer.max_epochs,
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "gradient_clip_val": trainer.gradient_clip_val,
            "precision": str(trainer.precision),
            "world_size": trainer.world_size,
            "strategy": type(trainer.strategy).__name__,
        }
        attrs = {
            "trainer": "lightning.Trainer",
            "trainer_settings": json.dumps(settings, default=str),
            **self.probe_options.pop("attrs", {}),
        }
        module = probed_module(pl_module, self.probe_options.get("layers"))
        self.probe = Probe(
            module, self.run_path, every=self.every, attrs=attrs, **self.probe_options
        ).__enter__()

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        # Lightning divides each micro-batch's loss by accumulate_grad_batches: their sum is
        # the step's mean loss.
        if self.probe is not None and self.probe.taps.recording_now():
            value = loss.detach().float().reshape(())
            self._loss = value if self._loss is None else self._loss + value

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.probe is not None:
            loss, self._loss = self._loss, None
            self.probe.step(loss=loss)

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.probe is not None:
            self.probe.taps.set_recording(None)  # validation's forwards are not training's

    def on_validation_end(self, trainer, pl_module) -> None:
        p = self.probe
        if p is not None:
            p.taps.set_recording(p.rec if p.records(p.step_index) else None)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._close(None)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._close(exception)

    def _close(self, exc: BaseException | None) -> None:
        p, self.probe = self.probe, None
        if p is not None:
            p.__exit__(type(exc) if exc else None, exc, None)


def probed_module(pl_module: torch.nn.Module, layers: Any = None) -> torch.nn.Module:
    """The model a LightningModule wraps when it holds all of its weights in one child (its
    ``training_step`` calls that child, not the LightningModule's own forward), else itself;
    itself when ``layers`` is a dotted path (relative to it)."""
    if isinstance(layers, str):
        return pl_module
    params = {id(p) for p in pl_module.parameters() if p.requires_grad}
    for child in pl_module.children():
        if params and params == {id(p) for p in child.parameters() if p.requires_grad}:
            return child
    return pl_module
