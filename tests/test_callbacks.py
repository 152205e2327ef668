"""The probe inside real training frameworks: a transformers.Trainer and a Lightning Trainer on
tiny models, with gradient accumulation and clipping, checked against the gradients each
framework hands its own callbacks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from probe_checks import read_run

pytest.importorskip("transformers")

from hf_models import batch, build, lm_loss  # noqa: E402


def layer_grad_norms(layers) -> np.ndarray:
    """‖grad‖ of each layer's weights as they are now, in float64."""
    return np.array(
        [
            np.sqrt(sum(p.grad.double().pow(2).sum().item() for p in layer.parameters()))
            for layer in layers
        ]
    )


# ----------------------------------------------------------------------------- transformers


class TokenDataset(torch.utils.data.Dataset):
    def __init__(self, n: int = 16):
        self.rows = [batch(i, size=1)[0] for i in range(n)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


def hf_trainer_run(tmp_path, name: str, max_grad_norm: float, every: int = 2):
    """Four optimizer steps of two micro-batches each, recorded every ``every``; returns the
    run and the layer gradient norms the Trainer's callbacks see before each optimizer step."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from attnres_probe.hooks.hf import ProbeCallback

    model = build("llama")
    seen = []

    class Reference(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            seen.append(layer_grad_norms(model.model.layers))

    args = TrainingArguments(
        output_dir=str(tmp_path / "out" / name), max_steps=4, per_device_train_batch_size=2,
        gradient_accumulation_steps=2, learning_rate=0.05, optim="sgd",
        lr_scheduler_type="constant", max_grad_norm=max_grad_norm, save_strategy="no",
        report_to=[], use_cpu=True, seed=0, disable_tqdm=True, logging_steps=1,
    )  # fmt: skip
    run = tmp_path / name
    callbacks = [ProbeCallback(run, every=every), Reference()]
    Trainer(model, args, train_dataset=TokenDataset(), callbacks=callbacks).train()
    return read_run(run), seen


def test_the_trainer_callback_records_optimizer_steps_with_unclipped_gradient_norms(tmp_path):
    pytest.importorskip("accelerate")
    free, free_grads = hf_trainer_run(tmp_path, "unclipped", max_grad_norm=0.0)
    clipped, clipped_grads = hf_trainer_run(tmp_path, "clipped", max_grad_norm=1e-3)
    # every=2 counts optimizer steps, each of two micro-batches
    assert free["step"].values.tolist() == [0, 2] == clipped["step"].values.tolist()
    for step in (0, 2):
        np.testing.assert_allclose(
            free["param_grad_norm"].sel(step=step).values, free_grads[step], rtol=1e-5
        )
    # Clipped training: the first step's gradients are the same as unclipped ones, and the
    # probe records them before the clip, which the Trainer's callbacks only see after it.
    np.testing.assert_allclose(
        clipped["param_grad_norm"].sel(step=0).values, free_grads[0], rtol=1e-4
    )
    assert np.all(clipped["param_grad_norm"].values > 10 * np.stack(clipped_grads)[[0, 2]])
    assert np.isfinite(clipped["grad_norm"].values).all()
    assert np.isfinite(clipped["loss"].values).all()
    settings = json.loads(clipped.attrs["training_args"])
    assert settings["gradient_accumulation_steps"] == 2 and settings["max_grad_norm"] == 1e-3
    assert clipped.attrs["status"] == "finished"


# ----------------------------------------------------------------------------- Lightning


def test_the_lightning_callback_records_optimizer_steps_before_clipping(tmp_path):
    lightning = pytest.importorskip("lightning")

    from attnres_probe.hooks.lightning import ProbeCallback

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = build("gpt2")

        def training_step(self, tokens, index):
            return lm_loss(self.model, tokens)[0]

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    seen, losses = [], []

    class Reference(lightning.Callback):
        def on_before_backward(self, trainer, pl_module, loss):
            losses.append(loss.item())

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen.append(layer_grad_norms(pl_module.model.transformer.h))

    module = Module()
    trainer = lightning.Trainer(
        accelerator="cpu", devices=1, max_steps=3, accumulate_grad_batches=2,
        gradient_clip_val=1e-3, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[ProbeCallback(tmp_path / "run", every=1), Reference()],
    )  # fmt: skip
    loader = torch.utils.data.DataLoader([batch(i) for i in range(6)], batch_size=None)
    trainer.fit(module, loader)
    ds = read_run(tmp_path / "run")
    assert ds["step"].values.tolist() == [0, 1, 2]
    np.testing.assert_allclose(ds["param_grad_norm"].values, np.stack(seen), rtol=1e-5)
    # the step's loss: the mean of its two micro-batch losses (each already halved)
    np.testing.assert_allclose(ds["loss"].values, np.array(losses).reshape(3, 2).sum(1), rtol=1e-5)
    assert np.isfinite(ds["grad_norm"].values).all()
    settings = json.loads(ds.attrs["trainer_settings"])
    assert settings["accumulate_grad_batches"] == 2 and ds.attrs["status"] == "finished"
    assert ds.attrs["model_class"].endswith("GPT2LMHeadModel")  # the model the module wraps
