"""The BDH engine: model, tokenizer, sampling, checkpoints, registry, training.

from core.engine import load_model, SamplingParams
lm = load_model("bdh-shakespeare")
text = lm.generate("ROMEO:", SamplingParams(max_tokens=64, temperature=0.0))
"""

from __future__ import annotations

from pathlib import Path

from .engine import Engine, build_engine
from .language_model import LanguageModel
from .model import BDH, BDHConfig
from .registry import ModelNotFoundError, ModelRegistry
from .sampling import SamplingParams
from .scheduler import EngineOverloaded, Scheduler
from .slots import SlotPool
from .stats import EngineObserver, SchedulerStats
from .stream import GenerationError, GenerationStream, StreamEvent
from .tokenizer import ByteTokenizer

DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[2] / "models"

__all__ = [
    "BDH",
    "BDHConfig",
    "ByteTokenizer",
    "Engine",
    "EngineObserver",
    "EngineOverloaded",
    "GenerationError",
    "GenerationStream",
    "LanguageModel",
    "ModelNotFoundError",
    "ModelRegistry",
    "SamplingParams",
    "Scheduler",
    "SchedulerStats",
    "SlotPool",
    "StreamEvent",
    "build_engine",
    "load_model",
]


def load_model(
    name: str,
    *,
    models_dir: str | Path | None = None,
    device: str = "auto",
    dtype: str = "float32",
) -> LanguageModel:
    """Load a registered model by name (from the repository's `models/` by default)."""
    return ModelRegistry(models_dir or DEFAULT_MODELS_DIR, device=device, dtype=dtype).load(name)
