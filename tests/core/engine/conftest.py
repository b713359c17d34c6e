from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from core.engine import BDH, LanguageModel
from core.engine.training import TEMPLATES

REPO_ROOT = Path(__file__).resolve().parents[3]
SHIPPED_MODEL_DIR = REPO_ROOT / "models" / "bdh-shakespeare"


def nano_model(seed: int = 0, scale: float = 1.0) -> BDH:
    """bdh-nano with weights large enough that attention matters (std 0.02 is near-uniform)."""
    torch.manual_seed(seed)
    config = dataclasses.replace(TEMPLATES["bdh-nano"].config, dropout=0.0)
    model = BDH(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.02 * scale)
    return model.eval()


@pytest.fixture
def nano() -> BDH:
    return nano_model(scale=5.0)


@pytest.fixture
def nano_lm(nano: BDH) -> LanguageModel:
    return LanguageModel("nano", nano, {})
