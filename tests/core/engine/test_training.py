"""Training lowers the loss, evaluates bits per byte, checkpoints and resumes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from core.engine import BDH, ModelRegistry
from core.engine.corpus import CorpusError, load_corpus, text_corpus
from core.engine.creation import create_model
from core.engine.training import TEMPLATES, TrainingConfig, TrainingStopped, train

CORPUS = text_corpus("the cat sat on the mat. the dog sat on the log. " * 200)


def _config(**overrides: object) -> TrainingConfig:
    base = dict(steps=40, batch_size=8, block_size=32, warmup_steps=5, eval_every=20)
    return TrainingConfig(**{**base, **overrides})  # type: ignore[arg-type]


def _nano() -> BDH:
    torch.manual_seed(0)
    return BDH(dataclasses.replace(TEMPLATES["bdh-nano"].config, dropout=0.0))


def test_a_few_steps_lower_the_loss() -> None:
    updates = []
    result = train(_nano(), CORPUS, _config(), on_update=updates.append, log_every=5)
    assert updates[0].loss > updates[-1].loss + 0.5
    assert result.val_bits_per_byte < 8.0  # uniform over 256 bytes is 8 bits
    assert any(u.val_bits_per_byte is not None for u in updates)
    assert all(u.tokens_per_s > 0 for u in updates)


def test_interrupted_training_resumes_to_the_same_weights(tmp_path: Path) -> None:
    straight = _nano()
    train(straight, CORPUS, _config(checkpoint_every=10))

    state = tmp_path / "state.pt"
    stopped = _nano()
    calls = iter(range(1000))
    with pytest.raises(TrainingStopped):
        train(
            stopped,
            CORPUS,
            _config(checkpoint_every=10),
            state_path=state,
            should_stop=lambda: next(calls) >= 25,
        )
    resumed = _nano()
    result = train(resumed, CORPUS, _config(checkpoint_every=10), state_path=state)
    assert result.resumed_from == 25
    for key, value in straight.state_dict().items():
        assert torch.allclose(resumed.state_dict()[key], value, atol=1e-5), key


def test_create_model_registers_a_usable_model_with_metadata(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    created = create_model(
        registry, name="cat-nano", template="bdh-nano", corpus=CORPUS, training=_config()
    )
    assert registry.names() == ["cat-nano"]
    meta = registry.info("cat-nano").metadata
    assert meta["training"]["steps"] == 40
    assert meta["evaluation"]["val_bits_per_byte"] > 0
    split = meta["evaluation"]["validation_split"]
    assert split["end"] == len(CORPUS.data) and 0 < split["start"] < split["end"]
    assert created.parameters == TEMPLATES["bdh-nano"].config.parameter_count()


def test_corpus_names_cannot_be_paths(tmp_path: Path) -> None:
    (tmp_path / "corpora").mkdir()
    (tmp_path / "corpora" / "mine.txt").write_text("hello")
    assert load_corpus("mine.txt", tmp_path).data == b"hello"
    for bad in ("../x", "/etc/passwd", "a/b"):
        with pytest.raises(CorpusError):
            load_corpus(bad, tmp_path)
