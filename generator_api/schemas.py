"""Generator run requests and results (kinds ``text`` and ``model``), discriminated on ``kind``.

Static bounds are checked when the run is submitted (422); limits that depend on the server's
settings (``generation.max_tokens_limit``, ``max_prompt_bytes``, ``max_n``) are checked when
the job starts, failing the run with code ``invalid_request``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.api.request_model import RequestModel, one_or_many
from core.config import Settings
from core.engine.corpus import CorpusError, corpus_file
from core.engine.registry import MODEL_NAME, model_exists
from core.engine.sampling import MAX_STOP_STRINGS, SamplingParams
from core.engine.training import TEMPLATES
from core.errors import Conflict, InvalidRequest

MAX_PROMPTS = 256
# Run parameters and results are stored as JSON; PostgreSQL's JSONB cannot hold U+0000.
NUL = "\x00"
MAX_TRAINING_STEPS = 100_000
_STRICT = ConfigDict(extra="forbid")


def _no_nul(value: str) -> str:
    if NUL in value:
        raise ValueError("text must not contain NUL (U+0000) characters")
    return value


def storable(text: str) -> str:
    """Generated text as it is stored (events, results): U+0000 becomes U+FFFD."""
    return text.replace(NUL, "\ufffd")


class TextRunRequest(RequestModel):
    """Batch generation: n choices for every prompt, with one set of sampling parameters."""

    model_config = _STRICT

    kind: Literal["text"] = "text"
    model: str | None = Field(None, max_length=64, description="Default: model.default.")
    prompts: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1, max_length=MAX_PROMPTS)
    max_tokens: int | None = Field(None, ge=1, description="Default: generation.max_tokens.")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=2.0)
    seed: int | None = None
    n: int = Field(1, ge=1)
    stop: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, max_length=MAX_STOP_STRINGS, json_schema_extra=one_or_many
    )

    @field_validator("stop", mode="before")
    @classmethod
    def _single_stop(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("prompts", "stop")
    @classmethod
    def _storable(cls, values: list[str]) -> list[str]:
        return [_no_nul(value) for value in values]

    def model_name(self, settings: Settings) -> str:
        return self.model or settings.model.default

    def to_sampling_params(self, settings: Settings) -> SamplingParams:
        """The engine's parameters, after the server's limits (InvalidRequest otherwise)."""
        limits = settings.generation
        max_tokens = self.max_tokens or limits.max_tokens
        if max_tokens > limits.max_tokens_limit:
            raise InvalidRequest(
                f"max_tokens={max_tokens} exceeds the limit of {limits.max_tokens_limit}",
                param="max_tokens",
            )
        if self.n > limits.max_n:
            raise InvalidRequest(f"n={self.n} exceeds the limit of {limits.max_n}", param="n")
        too_long = [
            i for i, p in enumerate(self.prompts) if len(p.encode()) > limits.max_prompt_bytes
        ]
        if too_long:
            raise InvalidRequest(
                f"prompt {too_long[0]} is longer than {limits.max_prompt_bytes} bytes",
                param=f"prompts.{too_long[0]}",
                code="context_length_exceeded",
            )
        fields = self.model_dump(exclude={"kind", "model", "prompts", "max_tokens"})
        return SamplingParams(**fields, max_tokens=max_tokens)


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class TextCompletion(BaseModel):
    prompt_index: int
    index: int
    text: str
    finish_reason: str | None
    usage: Usage


class TextRunResult(BaseModel):
    model: str
    completions: list[TextCompletion]
    usage: Usage

    def summary(self) -> dict[str, Any]:
        usage = self.usage.model_dump()
        return {"model": self.model, "completions": len(self.completions), "usage": usage}


class ModelRunRequest(RequestModel):
    """Create a model from a model template; train it on a corpus when one is given.

    The corpus is ``corpus`` (``"shakespeare"`` or a file name in ``<data_dir>/corpora/``) or
    ``text`` given inline. ``steps: 0`` registers the untrained model.
    """

    model_config = _STRICT

    kind: Literal["model"] = "model"
    name: str = Field(pattern=MODEL_NAME.pattern, max_length=64)
    template: str = "bdh-nano"
    corpus: str | None = Field(None, min_length=1, max_length=128)
    text: str | None = Field(None, min_length=1)
    steps: int = Field(200, ge=0, le=MAX_TRAINING_STEPS)
    batch_size: int = Field(8, ge=1, le=256)
    block_size: int = Field(128, ge=8, le=4096)
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0)
    warmup_steps: int | None = Field(None, ge=0)
    eval_every: int | None = Field(None, ge=1, description="Default: about 5 evaluations.")
    eval_batches: int = Field(4, ge=1, le=100)
    validation_fraction: float = Field(0.05, gt=0.0, lt=0.5)
    seed: int = 1337
    dropout: float | None = Field(None, ge=0.0, lt=1.0)
    description: str = Field("", max_length=1000)
    overwrite: bool = Field(False, description="Replace an existing model of that name.")

    @field_validator("text", "description")
    @classmethod
    def _storable(cls, value: str | None) -> str | None:
        return None if value is None else _no_nul(value)

    @field_validator("template")
    @classmethod
    def _known_template(cls, value: str) -> str:
        if value not in TEMPLATES:
            raise ValueError(f"unknown model template {value!r}; choose one of {sorted(TEMPLATES)}")
        return value

    @model_validator(mode="after")
    def _one_corpus(self) -> ModelRunRequest:
        if self.corpus is not None and self.text is not None:
            raise ValueError("give either corpus or text, not both")
        if self.steps > 0 and self.corpus is None and self.text is None:
            raise ValueError(
                "training (steps > 0) needs a corpus or a text; use steps: 0 for an untrained model"
            )
        return self

    @property
    def model(self) -> str:
        """The model this run is about (recorded on the run, so runs can be listed by model)."""
        return self.name

    def admit(self, settings: Settings) -> None:
        """Refuse at the door what the job would refuse later (file checks: off the loop).

        A missing corpus file is 422 ``corpus_unavailable``; an existing model without
        ``overwrite: true`` is 409 ``model_exists``. The job checks both again.
        """
        if self.corpus is not None:
            try:
                corpus_file(self.corpus, settings.data_dir)
            except CorpusError as exc:
                raise InvalidRequest(
                    str(exc), param="corpus", code="corpus_unavailable", status_code=422
                ) from None
        if not self.overwrite and model_exists(settings.model.models_dir, self.name):
            raise model_exists_error(self.name)


def model_exists_error(name: str) -> Conflict:
    return Conflict(
        f"a model named {name!r} exists; set overwrite: true to replace it",
        param="name",
        code="model_exists",
    )


class TrainingMetrics(BaseModel):
    steps: int
    final_loss: float
    val_bits_per_byte: float
    train_bits_per_byte: float
    tokens_seen: int
    seconds: float


class ModelRunResult(BaseModel):
    name: str
    template: str
    parameters: int
    size_bytes: int
    config: dict[str, Any]
    corpus: str | None = None
    corpus_bytes: int | None = None
    metrics: TrainingMetrics | None = None  # None for an untrained model

    def summary(self) -> dict[str, Any]:
        metrics = self.metrics.model_dump() if self.metrics else None
        return {"name": self.name, "parameters": self.parameters, "metrics": metrics}


GeneratorRequest = Annotated[TextRunRequest | ModelRunRequest, Field(discriminator="kind")]
RESULT_MODELS: dict[str, type[BaseModel]] = {"text": TextRunResult, "model": ModelRunResult}
