"""What every sampling request shares: OpenAI's fields, vLLM's extensions, chat messages.

vLLM's extensions are honoured, not only accepted; those with nothing to act on in a byte
vocabulary (`ignore_eos`: no end-of-sequence token; `skip_special_tokens`,
`spaces_between_special_tokens`, `add_special_tokens`: no special tokens) are accepted and
change nothing, as the README's field list says.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.api.request_model import RequestModel
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


class StreamOptions(RequestModel):
    model_config = _STRICT
    include_usage: bool = False
    # vLLM: with include_usage, every chunk carries its choice's usage so far.
    continuous_usage_stats: bool = False


class PromptLogprob(BaseModel):
    logprob: float
    rank: int
    decoded_token: str


# vLLM's prompt_logprobs: per prompt token (None for the first), token id -> its logprob.
PromptLogprobs = list[dict[str, PromptLogprob] | None]


class _SamplingRequest(RequestModel):
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
    # vLLM's extensions (the README's field list says what each does for a byte model).
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    stop_token_ids: list[TokenId] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    truncate_prompt_tokens: int | None = Field(None, ge=-1)
    allowed_token_ids: list[TokenId] | None = Field(None, min_length=1)
    bad_words: list[StopString] | None = None

    @field_validator("stop")
    @classmethod
    def _few_stop_strings(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        return value

    @field_validator("truncate_prompt_tokens")
    @classmethod
    def _keep_some_tokens(cls, value: int | None) -> int | None:
        if value == 0:
            raise ValueError("truncate_prompt_tokens must be -1 (the server's limit) or >= 1")
        return value

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def continuous_usage(self) -> bool:
        """vLLM sends usage on every chunk only when include_usage asks for it at all."""
        options = self.stream_options
        return options is not None and options.include_usage and options.continuous_usage_stats

    def truncate(self, ids: list[int], settings: Settings) -> list[int]:
        """The prompt's last `truncate_prompt_tokens` tokens (vLLM cuts from the left)."""
        keep = self.truncate_prompt_tokens
        if keep is None:
            return ids
        if keep == -1:
            keep = settings.generation.max_prompt_bytes
        return ids[-keep:]

    def _check_common(self, settings: Settings) -> None:
        limits = settings.generation
        if self.n > limits.max_n:
            raise invalid_value("n", f"n={self.n} exceeds this server's limit of {limits.max_n}")
        self._logit_bias()  # checked early, so a bad map is a 400 before anything runs
        if self.stream_options is not None and not self.stream:
            raise invalid_value(
                "stream_options", "stream_options is only allowed when stream is true"
            )
        if self.stream and self.prompt_logprobs:  # as vLLM
            raise invalid_value(
                "prompt_logprobs", "prompt_logprobs are not available when stream is true"
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
        if self.min_tokens > max_tokens:
            raise invalid_value(
                "min_tokens", f"min_tokens={self.min_tokens} exceeds max_tokens={max_tokens}"
            )
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
        values.update(
            min_tokens=self.min_tokens,
            stop_token_ids=list(self.stop_token_ids or []),
            include_stop_str_in_output=self.include_stop_str_in_output,
            allowed_token_ids=self.allowed_token_ids,
            bad_words=[word.encode("utf-8") for word in self.bad_words or []],
        )
        try:
            return SamplingParams(**values)
        except ValidationError as exc:  # a model default out of range, say
            error = exc.errors()[0]
            param = ".".join(str(part) for part in error["loc"]) or None
            message = f"invalid sampling parameters: {error['msg']}"
            raise InvalidRequest(message, param=param) from None


class ContentPart(RequestModel):
    """One part of a message's content; only ``{"type": "text"}`` parts are supported."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(RequestModel):
    # tool_calls, refusal...: rendered if a template uses them
    model_config = ConfigDict(extra="allow")
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


class ResponseEnvelope(BaseModel):
    """The keys every response and stream chunk of both endpoints starts with."""

    id: str
    created: int
    model: str
    system_fingerprint: str


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
