"""Checkpoints: safetensors weights and a JSON config beside the recording."""

from __future__ import annotations

import json

import pytest
import torch

from attnres_probe.checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    load_checkpoint,
    save_checkpoint,
)
from attnres_probe.models import ModelConfig, build_model


def test_a_saved_model_loads_back_identical_with_its_config(tmp_path):
    cfg = ModelConfig(residual="block", n_layers=2, d_model=16, n_heads=2, n_blocks=2)
    model = build_model(cfg)
    save_checkpoint(tmp_path, model.state_dict(), cfg.to_dict(), {"held_out_loss": 2.5})
    state, config = load_checkpoint(tmp_path / "recording.zarr")  # the store path works too
    assert config["model"] == cfg.to_dict() and config["extra"] == {"held_out_loss": 2.5}
    clone = build_model(ModelConfig.from_dict(config["model"]))
    clone.load_state_dict(state)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, clone.state_dict()[name]), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors", "config.json"]


def test_tied_weights_are_saved_as_copies(tmp_path):
    shared = torch.randn(4, 3)
    save_checkpoint(tmp_path, {"embed.weight": shared, "lm_head.weight": shared}, {})
    state, _ = load_checkpoint(tmp_path)
    assert torch.equal(state["embed.weight"], state["lm_head.weight"])


def test_missing_or_damaged_checkpoints_raise_a_clear_error(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="has no checkpoint.safetensors"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, {"w": torch.ones(8)}, {"n_layers": 1})
    weights = tmp_path / "checkpoint.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])
    with pytest.raises(CheckpointError, match="does not match the SHA-256 .* train the run again"):
        load_checkpoint(tmp_path)
    document = json.loads((tmp_path / "config.json").read_text())
    del document["weights_sha256"]  # as written before checkpoints carried a checksum
    (tmp_path / "config.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="cannot be read .* save the checkpoint again"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, {"w": torch.ones(8)}, {"n_layers": 1})
    (tmp_path / "config.json").write_text(json.dumps({"version": 1}))
    with pytest.raises(CheckpointError, match="no 'model' configuration"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="not a tensor"):
        save_checkpoint(tmp_path, {"w": [1.0, 2.0]}, {})
