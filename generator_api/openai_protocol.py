"""OpenAI-compatible request and response models (`/v1/completions`, `/v1/chat/completions`,
`/v1/models`, `/tokenize`, `/detokenize`).

Requests are strict like OpenAI's own API: an unknown field is a 400, not silently ignored, so a
typo never falls back to a default. Fields OpenAI defines that a byte-level BDH model cannot
honour (`suffix`, `best_of` ≠ n, tools, non-text content) are accepted by the
schema and refused by `to_sampling_params` / the serving layer with 400
``unsupported_parameter`` naming the field. Top-k, min-p and repetition penalty are the vLLM
extensions. Each request turns itself into the engine's `SamplingParams` with
`to_sampling_params(settings)`, checking the server's hard limits (``generation.*``).

Response models mirror OpenAI's field for field; streaming chunks are serialised with
``exclude_unset`` so that a chunk carries exactly the keys OpenAI's would (a delta without
``role`` after the first chunk, ``usage`` only when asked for).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.config import Settings
from core.engine.sampling import MAX_LOGIT_BIAS, MAX_LOGPROBS, MAX_STOP_STRINGS, SamplingParams
from core.errors import InvalidRequest

# OpenAI caps legacy completion logprobs at 5 and chat top_logprobs at 20.
MAX_COMPLETION_LOGPROBS = 5
MAX_CHAT_TOP_LOGPROBS = MAX_LOGPROBS
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # the legacy completions API's default
# Defaults a model may set in its metadata["generation_defaults"] (vLLM's generation config).
_MODEL_DEFAULT_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
)

_STRICT = ConfigDict(extra="forbid")
StopString = Annotated[str, Field(min_length=1)]
TokenId = Annotated[int, Field(ge=0, le=255)]


def unsupported(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="unsupported_parameter")


def invalid_value(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_value")


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class _SamplingRequest(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = _STRICT

    model: str = Field(min_length=1, max_length=255)
    n: int = Field(1, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)
    seed: int | None = None
    stop: StopString | list[StopString] | None = None
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)

    @field_validator("stop")
    @classmethod
    def _few_stop_strings(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        return value

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def _check_common(self, settings: Settings) -> None:
        limits = settings.generation
        if self.n > limits.max_n:
            raise invalid_value("n", f"n={self.n} exceeds this server's limit of {limits.max_n}")
        self._logit_bias()  # checked early, so a bad map is a 400 before anything runs
        if self.stream_options is not None and not self.stream:
            raise invalid_value(
                "stream_options", "stream_options is only allowed when stream is true"
            )

    def _logit_bias(self) -> dict[int, float]:
        """OpenAI's map of token id (a string key in JSON) to a bias in [-100, 100]."""
        bias: dict[int, float] = {}
        for key, value in (self.logit_bias or {}).items():
            try:
                token = int(key)
            except ValueError:
                raise invalid_value(
                    "logit_bias", f"logit_bias key {key!r} is not a token id"
                ) from None
            if not 0 <= token <= 255:
                raise invalid_value(
                    "logit_bias", f"logit_bias token id {token} is not a byte: use 0 to 255"
                )
            if not -MAX_LOGIT_BIAS <= value <= MAX_LOGIT_BIAS:
                raise invalid_value(
                    "logit_bias",
                    f"logit_bias values must be in [-100, 100], got {value} for token {token}",
                )
            bias[token] = value
        return bias

    def _check_max_tokens(self, value: int, param: str, settings: Settings) -> None:
        limit = settings.generation.max_tokens_limit
        if value > limit:
            raise invalid_value(
                param, f"{param}={value} exceeds this server's limit of {limit} tokens"
            )

    def _sampling_params(
        self,
        *,
        max_tokens: int,
        logprobs: int | None,
        defaults: Mapping[str, Any] | None,
    ) -> SamplingParams:
        values: dict[str, Any] = {
            key: value
            for key, value in (defaults or {}).items()
            if key in _MODEL_DEFAULT_FIELDS and value is not None
        }
        values.update(
            {
                key: getattr(self, key)
                for key in _MODEL_DEFAULT_FIELDS
                if getattr(self, key) is not None
            }
        )
        values.update(max_tokens=max_tokens, n=self.n, seed=self.seed, logprobs=logprobs)
        values["logit_bias"] = self._logit_bias()
        values["stop"] = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        try:
            return SamplingParams(**values)
        except ValidationError as exc:  # a model default out of range, say
            error = exc.errors()[0]
            param = ".".join(str(part) for part in error["loc"]) or None
            message = f"invalid sampling parameters: {error['msg']}"
            raise InvalidRequest(message, param=param) from None


# Completions ----------------------------------------------------------------------------------

PromptInput = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(_SamplingRequest):
    prompt: PromptInput
    max_tokens: int | None = Field(COMPLETIONS_DEFAULT_MAX_TOKENS, ge=0)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)

    def prompts(self) -> list[str | list[int]]:
        """The prompt as a list of texts or token-id lists (one entry per prompt)."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            raise invalid_value("prompt", "prompt must not be an empty list")
        if all(isinstance(p, int) for p in prompt):
            return [list(prompt)]  # type: ignore[arg-type]
        return list(prompt)  # type: ignore[arg-type]

    @property
    def max_new_tokens(self) -> int:
        return COMPLETIONS_DEFAULT_MAX_TOKENS if self.max_tokens is None else self.max_tokens

    def to_sampling_params(
        self, settings: Settings, defaults: Mapping[str, Any] | None = None
    ) -> SamplingParams | None:
        """The engine's parameters; None when nothing is to be generated (echo, max_tokens=0)."""
        self._check_common(settings)
        if self.suffix:
            raise unsupported("suffix", "suffix (insertion) is not supported by BDH models")
        if self.best_of is not None and self.best_of != self.n:
            raise unsupported("best_of", "best_of is only supported when it equals n")
        max_tokens = self.max_new_tokens
        self._check_max_tokens(max_tokens, "max_tokens", settings)
        if max_tokens == 0:
            if not self.echo:
                raise invalid_value("max_tokens", "max_tokens=0 is only allowed with echo=true")
            return None
        return self._sampling_params(
            max_tokens=max_tokens, logprobs=self.logprobs, defaults=defaults
        )


class CompletionLogprobs(BaseModel):
    """The legacy completions logprobs shape."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage


class CompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


# Chat completions -----------------------------------------------------------------------------


class ContentPart(BaseModel):
    """One part of a message's content; only ``{"type": "text"}`` parts are supported."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(
        extra="allow"
    )  # tool_calls, refusal...: rendered if a template uses them
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self, index: int) -> str:
        """The message's text; non-text content parts are refused."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        texts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise unsupported(
                    f"messages.{index}.content",
                    f"content parts of type {part.type!r} are not supported: BDH reads text only",
                )
            texts.append(part.text)
        return "".join(texts)


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str = "text"


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_CHAT_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    # Accepted and ignored, as they change nothing about the generated text.
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    # vLLM extension: end the prompt with the template's assistant cue (default) or not.
    add_generation_prompt: bool = True

    def max_new_tokens(self, settings: Settings) -> tuple[int, str]:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        if self.max_tokens is not None:
            return self.max_tokens, "max_tokens"
        return settings.generation.max_tokens, "max_tokens"

    def to_sampling_params(
        self, settings: Settings, defaults: Mapping[str, Any] | None = None
    ) -> SamplingParams:
        self._check_common(settings)
        self._check_unsupported()
        if self.top_logprobs is not None and not self.logprobs:
            raise invalid_value("top_logprobs", "top_logprobs requires logprobs to be true")
        max_tokens, param = self.max_new_tokens(settings)
        self._check_max_tokens(max_tokens, param, settings)
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return self._sampling_params(max_tokens=max_tokens, logprobs=logprobs, defaults=defaults)

    def _check_unsupported(self) -> None:
        if self.tools or self.functions:
            raise unsupported("tools", "tool and function calling are not supported")
        if self.tool_choice not in (None, "none") or self.function_call not in (None, "none"):
            raise unsupported("tool_choice", "tool and function calling are not supported")
        if self.response_format is not None and self.response_format.type != "text":
            raise unsupported(
                "response_format", "only response_format {'type': 'text'} is supported"
            )
        if self.audio is not None or (self.modalities and self.modalities != ["text"]):
            raise unsupported("modalities", "only text output is supported")
        if self.prediction is not None:
            raise unsupported("prediction", "predicted outputs are not supported")


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


# Models, tokenize, detokenize -----------------------------------------------------------------


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "hatchery"
    root: str
    parent: str | None = None
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeRequest(BaseModel):
    """Either ``prompt`` or chat ``messages`` (rendered with the model's chat template)."""

    model_config = _STRICT
    model: str = Field(min_length=1, max_length=255)
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool = True


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeRequest(BaseModel):
    model_config = _STRICT
    model: str = Field(min_length=1, max_length=255)
    tokens: list[TokenId]


class DetokenizeResponse(BaseModel):
    prompt: str
