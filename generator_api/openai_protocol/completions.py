"""`/v1/completions`: the request (OpenAI's fields plus vLLM's) and the response shapes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field

from core.config import Settings
from core.engine.sampling import SamplingParams

from .common import (
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    MAX_COMPLETION_LOGPROBS,
    PromptLogprobs,
    ResponseEnvelope,
    Usage,
    _SamplingRequest,
    invalid_value,
    unsupported,
)

PromptInput = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(_SamplingRequest):
    prompt: PromptInput
    max_tokens: int | None = Field(COMPLETIONS_DEFAULT_MAX_TOKENS, ge=0)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)
    add_special_tokens: bool = True  # vLLM: no special tokens in a byte vocabulary

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
    prompt_logprobs: PromptLogprobs | None = None


class CompletionResponse(ResponseEnvelope):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage


class CompletionChunk(ResponseEnvelope):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = None
