"""Training on the default corpus: loss goes down for every kind, and a seed fixes the run."""

import pytest

from attnres_probe.data import ByteCorpus
from attnres_probe.models import ModelConfig
from attnres_probe.train import TrainConfig, train

SMALL = dict(n_layers=2, d_model=32, n_heads=2, n_blocks=2, max_seq_len=32)
STEPS = TrainConfig(steps=40, batch_size=8, seq_len=32, lr=1e-2, warmup_steps=5, record_every=0)


@pytest.fixture(scope="module")
def corpus():
    return ByteCorpus.load(max_bytes=400_000)


@pytest.mark.parametrize("residual", ["baseline", "full", "block"])
def test_training_reduces_loss_on_the_default_corpus(residual, corpus, tmp_path):
    result = train(ModelConfig(residual=residual, **SMALL), STEPS, tmp_path / "run", corpus=corpus)
    first = sum(result.losses[:5]) / 5
    last = sum(result.losses[-5:]) / 5
    assert last < first - 1.0, (first, last)  # from ≈ln 256 = 5.5 to well below
    assert result.held_out_loss < first
    assert (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_same_seed_gives_the_same_losses(corpus, tmp_path):
    cfg = ModelConfig(residual="block", **SMALL)
    short = TrainConfig(**{**STEPS.__dict__, "steps": 8})
    a = train(cfg, short, tmp_path / "a", corpus=corpus).losses
    b = train(cfg, short, tmp_path / "b", corpus=corpus).losses
    c = train(cfg, TrainConfig(**{**short.__dict__, "seed": 1}), tmp_path / "c", corpus=corpus)
    assert a == b
    assert a != c.losses


def test_default_corpus_is_python_source_text():
    corpus = ByteCorpus.load(max_bytes=100_000)
    text = bytes(corpus.train[:20_000]).decode("utf-8", errors="replace")
    assert "def " in text and "import" in text
    assert corpus.source == "python-stdlib"
