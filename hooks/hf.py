"""The probe as a ``transformers.Trainer`` callback (needs ``transformers`` and ``accelerate``:
``pip install "attnres-probe[hf]"``).

    from attnres_probe.hooks.hf import ProbeCallback

    callback = ProbeCallback("runs/exp1", every=10)
    trainer = Trainer(model, args, train_dataset=dataset, callbacks=[callback])
    trainer.train()

The probe attaches when training begins and closes the run when it ends. Steps are optimizer
steps: with gradient accumulation every micro-batch's forward and backward add to the step, and
``every`` counts optimizer steps. The recorded loss is the mean of the model outputs' ``loss``
over the step's micro-batches. The Trainer clips gradients before its last callback ahead of the
optimizer (``on_pre_optimizer_step``), so the callback keeps each parameter gradient's squared
norm as backward leaves it (a post-accumulate-grad hook, on recorded steps only, on the device)
and hands the probe the clip's coefficient: ``param_grad_norm`` is the unclipped norm. The
run's attributes hold the TrainingArguments (``training_args``, JSON). Forwards of an evaluation
during training are not recorded. Under torchrun every rank runs the callback and rank 0
writes, as for the probe itself.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from transformers import TrainerCallback

from attnres_probe.hooks.probe import CallbackSettings, Probe

__all__ = ["ProbeCallback"]


class ProbeCallback(CallbackSettings, TrainerCallback):
    """Record the model a ``transformers.Trainer`` trains into the run at ``run_path`` every
    ``every`` optimizer steps; ``probe_options`` go to :class:`attnres_probe.hooks.Probe`
    (``layers``, ``attrs``, ``strict``, ``flush_every``, ...)."""

    def __init__(self, run_path: str | os.PathLike, every: int = 1, **probe_options: Any):
        super().__init__(run_path, every, **probe_options)
        self._handles: list = []
        self._pre_clip: torch.Tensor | None = None  # [n_params] ‖grad‖² as backward left it
        self._params: list[torch.nn.Parameter] = []
        self._loss: torch.Tensor | None = None
        self._losses = 0

    # ------------------------------------------------------------------ Trainer events

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        attrs = {
            "trainer": "transformers.Trainer",
            "training_args": json.dumps(args.to_sanitized_dict(), default=str),
            **self.probe_options.pop("attrs", {}),
        }
        self.probe = Probe(
            model, self.run_path, every=self.every, attrs=attrs, **self.probe_options
        ).__enter__()
        self._handles.append(model.register_forward_hook(self._keep_loss))
        if args.max_grad_norm is not None and args.max_grad_norm > 0:
            self._params = [p for p in model.parameters() if p.requires_grad]
            device = self._params[0].device if self._params else torch.device("cpu")
            self._pre_clip = torch.zeros(len(self._params), device=device)
            for index, param in enumerate(self._params):
                self._handles.append(
                    param.register_post_accumulate_grad_hook(self._pre_clip_hook(index))
                )

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        p = self.probe
        if p is None:
            return
        recorded = p.records(p.step_index)
        loss = scale = None
        if recorded and self._losses:
            loss = self._loss / self._losses
        if recorded and self._pre_clip is not None:
            scale = self._clip_coefficient()
        self._loss, self._losses = None, 0
        p.step(loss=loss, grad_scale=scale)

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_evaluate and self.probe is not None:
            self.probe.taps.set_recording(None)  # evaluation's forwards are not training's

    def on_evaluate(self, args, state, control, **kwargs):
        p = self.probe
        if p is not None:
            p.taps.set_recording(p.rec if p.records(p.step_index) else None)

    def on_train_end(self, args, state, control, **kwargs):
        self._close(None)

    # ------------------------------------------------------------------ helpers

    def _recording(self) -> bool:
        p = self.probe
        return p is not None and p.taps.recording_now()

    def _keep_loss(self, module, args, output) -> None:
        loss = getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor) and loss.numel() == 1 and self._recording():
            value = loss.detach().float().reshape(())
            self._loss = value if self._loss is None else self._loss + value
            self._losses += 1

    def _pre_clip_hook(self, index: int):
        def hook(param: torch.Tensor) -> None:
            if param.grad is not None and self._recording():
                norm = torch.linalg.vector_norm(param.grad, dtype=torch.float32)
                self._pre_clip[index].copy_(norm.square())  # the last backward's value stays

        return hook

    def _clip_coefficient(self) -> torch.Tensor:
        """‖grads now‖ / ‖grads as backward left them‖ (1 where there was no gradient), on the
        device: the factor the Trainer's clipping multiplied every gradient by."""
        grads = [p.grad for p in self._params if p.grad is not None]
        if not grads:
            return torch.ones((), device=self._pre_clip.device)
        now = torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32)).square().sum()
        before = self._pre_clip.sum()
        self._pre_clip.zero_()
        return torch.where(before > 0, (now / before.clamp_min(1e-30)).sqrt(), 1.0)

    def _close(self, exc: BaseException | None) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        p, self.probe = self.probe, None
        if p is not None:
            p.__exit__(type(exc) if exc else None, exc, None)
