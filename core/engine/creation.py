"""Create a model from a template, train it on a corpus, and register it by name."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from .corpus import Corpus, split_point
from .model import BDH
from .registry import ModelRegistry, validate_model_name
from .training import TrainingConfig, TrainingResult, TrainingUpdate, get_template, train

logger = logging.getLogger(__name__)

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


@dataclasses.dataclass
class CreatedModel:
    name: str
    path: Path
    parameters: int
    size_bytes: int
    metadata: dict[str, Any]


def create_model(
    registry: ModelRegistry,
    *,
    name: str,
    template: str,
    corpus: Corpus | None,
    training: TrainingConfig,
    dropout: float | None = None,
    description: str = "",
    command: str | None = None,
    state_dir: Path | None = None,
    on_update: Callable[[TrainingUpdate], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> CreatedModel:
    """Build `template`, train it on `corpus` (untrained when None), save it as `name`.

    With `state_dir`, training state is checkpointed there and a rerun resumes it.
    """
    validate_model_name(name)
    spec = get_template(template)
    config = dataclasses.replace(spec.config)
    if dropout is not None:
        config = dataclasses.replace(config, dropout=dropout)
    torch.manual_seed(training.seed)
    model = BDH(config)
    result: TrainingResult | None = None
    if corpus is not None and training.steps > 0:
        state_path = state_dir / "train_state.pt" if state_dir else None
        result = train(
            model,
            corpus,
            training,
            state_path=state_path,
            on_update=on_update,
            should_stop=should_stop,
        )
    metadata = _metadata(name, template, corpus, training, result, description, command)
    path = registry.register(name, model.cpu().eval(), metadata)
    return CreatedModel(
        name=name,
        path=path,
        parameters=config.parameter_count(),
        size_bytes=(path / "model.safetensors").stat().st_size,
        metadata=metadata,
    )


def _metadata(
    name: str,
    template: str,
    corpus: Corpus | None,
    training: TrainingConfig,
    result: TrainingResult | None,
    description: str,
    command: str | None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "description": description or f"{template} model",
        "template": template,
        "created_at": datetime.now(UTC).isoformat(),
        "chat_template": DEFAULT_CHAT_TEMPLATE,
        "generation_defaults": {"temperature": 0.8, "top_k": 0, "top_p": 0.95, "max_tokens": 256},
    }
    if corpus is None or result is None:
        metadata["training"] = None
        return metadata
    cut = split_point(len(corpus.data), training.validation_fraction)
    metadata["training"] = {
        "command": command,
        "corpus": corpus.name,
        "corpus_bytes": len(corpus.data),
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "tokens_seen": result.tokens_seen,
        "seconds": round(result.seconds, 1),
        "final_loss": round(result.final_loss, 4),
        "hyperparameters": dataclasses.asdict(training),
        "torch": torch.__version__,
        "finished_at": datetime.fromtimestamp(time.time(), UTC).isoformat(),
    }
    metadata["evaluation"] = {
        "val_bits_per_byte": round(result.val_bits_per_byte, 4),
        "train_bits_per_byte": round(result.train_bits_per_byte, 4),
        # Held-out text: the corpus bytes from `start` to its end (see Corpus.split).
        "validation_split": {
            "corpus": corpus.name,
            "start": cut,
            "end": len(corpus.data),
            "fraction": training.validation_fraction,
        },
        # A model should stay within this of its recorded figure (Test component, quality).
        "max_bits_per_byte": round(result.val_bits_per_byte * 1.1, 4),
    }
    return metadata
