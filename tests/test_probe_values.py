"""The probe records what plain torch computes, for every residual kind, at the right steps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from probe_checks import (
    assert_recorded,
    batch,
    hook_count,
    lm_loss,
    read_run,
    reference_native,
    tiny_model,
    train_steps,
)

from attnres_probe.hooks import probe
from attnres_probe.store import SCHEMA_VERSION

KINDS = ["baseline", "full", "block"]


@pytest.mark.parametrize("residual", KINDS)
def test_recorded_statistics_equal_plain_torch(residual, tmp_path):
    _check_against_plain_torch(residual, tmp_path)


def _check_against_plain_torch(residual: str, tmp_path) -> None:
    model = tiny_model(residual)
    tokens = [batch(0), batch(1)]
    # Step 1 is checked against a copy of the model as it is after step 0 of the same run.
    expected = [reference_native(model, tokens[0])]
    with probe(model, tmp_path / "run", every=1) as p:
        train_steps(model, p, tokens[:1])
        expected.append(reference_native(model, tokens[1]))
        train_steps(model, p, tokens[1:])
    ds = read_run(tmp_path / "run")
    assert ds["step"].values.tolist() == [0, 1]
    for step in (0, 1):
        assert_recorded(ds, step, expected[step])
    assert ds["nonfinite"].values.tolist() == [0, 0]


@pytest.mark.parametrize("residual", ["full", "block"])
def test_depth_weights_are_the_models_own_and_sum_to_one_over_available_sources(residual, tmp_path):
    model = tiny_model(residual)
    tokens = batch(2)
    per_token = model.depth_weights(tokens[:, :-1])  # [sites, sources, B, T], NaN: no source
    with probe(model, tmp_path / "run") as p:
        lm_loss(model, tokens).backward()
        p.step()
    ds = read_run(tmp_path / "run")
    recorded = np.concatenate(
        [ds["depth_weights"].values[0], ds["depth_weights_out"].values[0][None]], 0
    )
    expected = per_token.double().mean((2, 3)).numpy()  # NaN stays NaN where it is missing
    np.testing.assert_array_equal(np.isnan(recorded), np.isnan(expected))
    np.testing.assert_allclose(recorded, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.nansum(recorded, 1), 1.0, rtol=1e-5)
    assert ds["source"].values.tolist() == model.cfg.source_names
    w = per_token.double().clamp_min(1e-30)
    entropy = -(torch.nan_to_num(w * w.log())).sum(1).mean((1, 2)).numpy()
    np.testing.assert_allclose(ds["depth_entropy"].values[0], entropy[:-1], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ds["depth_entropy_out"].values[0], entropy[-1], rtol=1e-4)


def test_block_depth_weights_mark_missing_sources_as_nan(tmp_path):
    model = tiny_model("block")  # 6 sublayers, 3 blocks of 2
    with probe(model, tmp_path / "run") as p:
        lm_loss(model, batch(0)).backward()
        p.step()
    w = read_run(tmp_path / "run")["depth_weights"].isel(step=0)
    available = ~np.isnan(w.values)
    # columns emb, block1, block2, block3, partial; block n's first sublayer has no partial sum
    expected = np.array(
        [
            [1, 0, 0, 0, 0],
            [1, 0, 0, 0, 1],
            [1, 1, 0, 0, 0],
            [1, 1, 0, 0, 1],
            [1, 1, 1, 0, 0],
            [1, 1, 1, 0, 1],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(available, expected)


def test_every_n_records_exactly_those_steps_and_others_run_without_statistics(tmp_path):
    model = tiny_model("full")
    seen = []  # (recording active, submodule hooks) per forward
    outer = model.register_forward_hook(
        lambda m, a, o: seen.append((model.recording is not None, hook_count(model)))
    )
    with probe(model, tmp_path / "run", every=3, flush_every=2) as p:
        train_steps(model, p, [batch(i) for i in range(10)])
    outer.remove()
    ds = read_run(tmp_path / "run")
    assert ds["step"].values.tolist() == [0, 3, 6, 9]
    assert p.recorded_steps == [0, 3, 6, 9]
    assert [active for active, _ in seen] == [i % 3 == 0 for i in range(10)]
    # every forward sees only the outer test hook and the probe's two model hooks
    assert {hooks for _, hooks in seen} == {3}
    assert np.isfinite(ds["hidden_rms"].values).all()
    assert ds.attrs["status"] == "finished"


def test_gradient_accumulation_adds_every_forward_of_the_step(tmp_path):
    model = tiny_model("baseline")
    a, b = batch(3), batch(4)
    with probe(model, tmp_path / "run") as p:
        loss = (lm_loss(model, a) + lm_loss(model, b)) / 2
        loss.backward()
        p.step(loss=loss)
    ds = read_run(tmp_path / "run")
    both = reference_native(model, torch.cat([a, b]))  # one forward over both halves
    for name in ("hidden_rms", "update_rms"):
        np.testing.assert_allclose(ds[name].values[0], both[name], rtol=1e-5)


def test_run_attributes_describe_the_model(tmp_path):
    model = tiny_model("block")
    with probe(model, tmp_path / "run", attrs={"note": "x"}) as p:
        lm_loss(model, batch(0)).backward()
        p.step()
    ds = read_run(tmp_path / "run")
    assert json.loads(ds.attrs["model_config"]) == model.cfg.to_dict()
    assert ds.attrs["residual"] == "block"
    assert ds.attrs["n_layers"] == 3
    assert ds.attrs["schema_version"] == SCHEMA_VERSION
    assert ds.attrs["note"] == "x"
    assert "torch" in json.loads(ds.attrs["versions"])
    assert ds["kind"].values.tolist() == ["attn", "mlp"] * 3
    assert ds["layer_of"].values.tolist() == [0, 0, 1, 1, 2, 2]


def test_the_training_loop_records_through_the_probe(tmp_path):
    from attnres_probe.data import ByteCorpus
    from attnres_probe.models import ModelConfig
    from attnres_probe.train import TrainConfig, train

    cfg = ModelConfig(residual="full", n_layers=2, d_model=32, n_heads=2, max_seq_len=16)
    corpus = ByteCorpus.load(max_bytes=20_000)
    train_cfg = TrainConfig(steps=5, batch_size=2, seq_len=16, record_every=2, eval_batches=1)
    result = train(cfg, train_cfg, tmp_path / "run", corpus=corpus)
    ds = read_run(tmp_path / "run")
    assert ds["step"].values.tolist() == [0, 2, 4]
    np.testing.assert_allclose(ds["loss"].values, np.array(result.losses)[[0, 2, 4]], rtol=1e-6)
    assert np.isfinite(ds["grad_norm"].values).all()
