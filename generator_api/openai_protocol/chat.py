"""`/v1/chat/completions`: the request (OpenAI's fields plus vLLM's) and the response shapes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.api.request_model import RequestModel
from core.config import Settings
from core.engine.sampling import SamplingParams

from .common import (
    MAX_CHAT_TOP_LOGPROBS,
    ChatMessage,
    PromptLogprobs,
    ResponseEnvelope,
    Usage,
    _SamplingRequest,
    invalid_value,
    unsupported,
)


class ResponseFormat(RequestModel):
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
    add_special_tokens: bool = False  # vLLM's chat default; nothing to add to bytes either way

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


class ChatCompletionResponse(ResponseEnvelope):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage
    prompt_logprobs: PromptLogprobs | None = None


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(ResponseEnvelope):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
