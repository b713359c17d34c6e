"""Models and data for the Test component's tests, made in a second or two.

- ``bdh-nano`` (random weights) comes from the session ``models_dir``.
- ``nano-bigram``: a bdh-nano whose embedding and head are fitted to the byte bigrams of a
  small generated corpus, and whose decoder is zero, so each layer adds nothing and the model
  is exactly that bigram model. It is a *good* model for the quality suite (it beats the
  unigram baseline, writes ASCII) without a slow training run; its metadata records the
  validation split and threshold as ``core.engine.creation`` does.
- ``nano-noisy``: the same with its head perturbed by noise — worse than its recorded figure.
- ``nano-nan``: bdh-nano with NaN in its encoder — a broken checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from core.engine import BDH, ModelRegistry
from core.engine.corpus import split_point
from tests.conftest import build_nano_model

CORPUS_NAME = "tiny.txt"
VALIDATION_FRACTION = 0.1
FIT_STEPS = 100


def corpus_text(seed: int = 0, sentences: int = 1500) -> str:
    """Simple English-like sentences: far from random bytes, quick to model."""
    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "my friend", "the old king", "our queen", "a small bird"]
    verbs = ["sees", "likes", "finds", "keeps", "wants", "carries", "paints", "remembers"]
    objects = ["the ball", "a red hat", "the old house", "some bread", "the river", "his letter"]
    parts = []
    for _ in range(sentences):
        sentence = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}"
        parts.append(sentence.capitalize() + rng.choice(".!?."))
        parts.append("\n" if rng.random() < 0.2 else " ")
    return "".join(parts)


def fit_bigram_model(data: bytes, seed: int = 0) -> BDH:
    """bdh-nano computing a bigram model of ``data``: logits = LN(embed[x]) @ lm_head."""
    model = build_nano_model(seed=seed, scale=1.0)
    ids = torch.tensor(list(data))
    counts = torch.zeros(256, 256)
    counts.index_put_((ids[:-1], ids[1:]), torch.ones(len(ids) - 1), accumulate=True)
    D = model.config.n_embd
    generator = torch.Generator().manual_seed(seed)
    embed = torch.randn(256, D, generator=generator).requires_grad_()
    head = torch.zeros(D, 256, requires_grad=True)
    optimizer = torch.optim.Adam([embed, head], lr=0.1)
    for _ in range(FIT_STEPS):
        log_probs = (F.layer_norm(embed, (D,)) @ head).log_softmax(-1)  # (256, 256)
        loss = -(counts * log_probs).sum() / counts.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        model.embed.weight.copy_(embed)
        model.lm_head.copy_(head)
        model.decoder.zero_()  # m = 0, so every layer leaves x as it is
    return model.eval()


def bigram_bits_per_byte(model: BDH, data: bytes) -> float:
    ids = torch.tensor(list(data))
    with torch.no_grad():
        logits = F.layer_norm(model.embed.weight, (model.config.n_embd,)) @ model.lm_head
        nats = F.cross_entropy(logits[ids[:-1]], ids[1:])
    return float(nats) / math.log(2)


def metadata_for(data: bytes, val_bits_per_byte: float, block_size: int = 64) -> dict[str, Any]:
    """Metadata in the shape ``core.engine.creation`` records after training."""
    cut = split_point(len(data), VALIDATION_FRACTION)
    return {
        "description": "bigram-fitted bdh-nano (tests)",
        "training": {"corpus": CORPUS_NAME, "hyperparameters": {"block_size": block_size}},
        "evaluation": {
            "val_bits_per_byte": round(val_bits_per_byte, 4),
            "validation_split": {"corpus": CORPUS_NAME, "start": cut, "end": len(data)},
            "max_bits_per_byte": round(val_bits_per_byte * 1.1, 4),
        },
    }


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Small tensors on busy cores: one thread beats several by far (no waiting for a peer
    that is descheduled). Restored afterwards; tests run one at a time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def build_test_models(models_dir: Path, data_dir: Path) -> None:
    """Register the models above in ``models_dir``, and their corpus in ``data_dir``."""
    with one_torch_thread():
        _build_test_models(models_dir, data_dir)


def _build_test_models(models_dir: Path, data_dir: Path) -> None:
    text = corpus_text().encode()
    (data_dir / "corpora").mkdir(parents=True, exist_ok=True)
    (data_dir / "corpora" / CORPUS_NAME).write_bytes(text)
    registry = ModelRegistry(models_dir)
    good = fit_bigram_model(text[: split_point(len(text), VALIDATION_FRACTION)])
    held_out = text[split_point(len(text), VALIDATION_FRACTION) :]
    metadata = metadata_for(text, bigram_bits_per_byte(good, held_out))
    registry.register("nano-bigram", good, metadata)
    registry.register("nano-noisy", perturbed(good, std=0.5), metadata)
    broken = build_nano_model()
    with torch.no_grad():
        broken.encoder[0, 0, :8] = float("nan")
    registry.register("nano-nan", broken, {"description": "NaN weights (tests)"})


def perturbed(model: BDH, std: float, seed: int = 1) -> BDH:
    noisy = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        noisy.lm_head.add_(torch.randn(noisy.lm_head.shape, generator=generator) * std)
    return noisy
