"""Stream chunks: a validated request (`Prepared`) and the chunks OpenAI would send for it.

`ChunkWriter` turns engine events into ``data: {json}`` messages: for chat, a role chunk per
choice first, then content deltas, then a chunk with only ``finish_reason``; for completions,
text (and logprobs) chunks, ``finish_reason`` on each choice's last chunk; and a final usage
chunk (``choices: []``) when the request asked for one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from typing import Any, Literal

from pydantic_core import to_json

from core.engine.sequence import FINISH_LENGTH, CompletionOutput, TokenLogprob
from core.engine.stream import StreamEvent

from .generation import Generation
from .openai_protocol import (
    ChatChunkChoice,
    ChatCompletionChunk,
    CompletionChoice,
    CompletionChunk,
    DeltaMessage,
    PromptLogprobs,
    Usage,
)
from .openai_render import OffsetTracker, chat_logprobs, choice_index, completion_logprobs, sse


def _version() -> str:
    try:
        return importlib_metadata.version("hatchery")
    except importlib_metadata.PackageNotFoundError:
        return "0.0.0"


SYSTEM_FINGERPRINT = f"fp_hatchery_{_version()}"
# Stands where a text chunk's text goes; no id, model name or fingerprint can hold a NUL.
_TEXT_MARK = "\x00hatchery:text\x00"
_TEXT_MARK_JSON = to_json(_TEXT_MARK).decode()


@dataclass
class Prepared:
    """A validated request whose prompts are queued (or need no generation)."""

    kind: Literal["completion", "chat"]
    id: str
    model: str
    prompts: list[list[int]]
    n: int
    generation: Generation | None  # None: echo with max_tokens=0
    include_usage: bool = False
    continuous_usage: bool = False  # vLLM's continuous_usage_stats: usage on every chunk
    vllm_prompt_logprobs: list[PromptLogprobs] | None = None  # per prompt
    echo_texts: list[str] | None = None  # completions with echo
    logprobs: int | None = None  # completions: top-k (0 allowed); None: no logprobs
    prompt_logprobs: list[list[TokenLogprob | None]] | None = None  # echo + logprobs
    chat_logprobs: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    def vllm_prompt_logprobs_of(self, prompt_index: int) -> PromptLogprobs | None:
        if self.vllm_prompt_logprobs is None:
            return None
        return self.vllm_prompt_logprobs[prompt_index]

    def prompt_entries(self, prompt_index: int) -> list[TokenLogprob | None]:
        """Logprob entries of an echoed prompt (all None unless they were computed)."""
        if self.prompt_logprobs is not None:
            return list(self.prompt_logprobs[prompt_index])
        return [None] * len(self.prompts[prompt_index])


class ChunkWriter:
    """Turns engine events into OpenAI stream chunks for one prepared request."""

    def __init__(self, prepared: Prepared) -> None:
        self.prepared = prepared
        self.offsets: dict[int, OffsetTracker] = {}
        self.generated: dict[int, int] = {}  # tokens streamed so far, per choice number
        # (choice number, finish reason) -> the text chunk's JSON before and after its text
        self._text_halves: dict[tuple[int, str | None], tuple[str, str]] = {}

    def _base(self, number: int | None = None) -> dict[str, Any]:
        p = self.prepared
        base: dict[str, Any] = {
            "id": p.id,
            "created": p.created,
            "model": p.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        if p.continuous_usage and number is not None:
            # vLLM's continuous_usage_stats: the usage of this chunk's choice so far.
            prompt = len(p.prompts[number // p.n])
            completion = self.generated.get(number, 0)
            base["usage"] = Usage(
                prompt_tokens=prompt,
                completion_tokens=completion,
                total_tokens=prompt + completion,
            )
        elif p.include_usage:
            base["usage"] = None  # OpenAI sends "usage": null on every chunk but the last
        return base

    # Chunks are written with exclude_unset (see `sse`): "object" is set so that it is kept.
    def _completion(self, choice: CompletionChoice) -> str:
        base = self._base(choice.index)
        return sse(CompletionChunk(**base, object="text_completion", choices=[choice]))

    def _chat(self, choice: ChatChunkChoice) -> str:
        base = self._base(choice.index)
        return sse(ChatCompletionChunk(**base, object="chat.completion.chunk", choices=[choice]))

    def opening(self) -> list[str]:
        """Chat: the role chunk of every choice. Completions with echo: the prompt text."""
        p, messages = self.prepared, []
        for prompt_index, prompt in enumerate(p.prompts):
            for index in range(p.n):
                number = choice_index(prompt_index, index, p.n)
                if p.kind == "chat":
                    delta = DeltaMessage(role="assistant", content="")
                    choice = ChatChunkChoice(
                        index=number, delta=delta, logprobs=None, finish_reason=None
                    )
                    messages.append(self._chat(choice))
                elif p.echo_texts is not None:
                    tracker = self.offsets.setdefault(number, OffsetTracker())
                    logprobs = None
                    if p.logprobs is not None:
                        entries = p.prompt_entries(prompt_index)
                        logprobs = completion_logprobs(entries, prompt, tracker)
                    text = p.echo_texts[prompt_index]
                    messages.append(self._completion_choice(number, text, logprobs, None))
        return messages

    def _text_chunk(self, number: int, text: str, finish_reason: str | None) -> str:
        """A chunk of text without logprobs, the one sent per token: pydantic renders it once
        per choice and finish reason with a mark for the text, and each chunk fills the text
        in, serialised by the same pydantic-core serializer, so the bytes are the ones
        pydantic would write, without building and validating two models per token."""
        if self.prepared.continuous_usage:  # the usage differs from chunk to chunk
            return self._render_text(number, text, finish_reason)
        halves = self._text_halves.get((number, finish_reason))
        if halves is None:
            before, mark, after = self._render_text(number, _TEXT_MARK, finish_reason).partition(
                _TEXT_MARK_JSON
            )
            assert mark, "the text mark is missing from the rendered chunk"
            halves = self._text_halves[(number, finish_reason)] = (before, after)
        return halves[0] + to_json(text).decode() + halves[1]

    def _render_text(self, number: int, text: str, finish_reason: str | None) -> str:
        if self.prepared.kind == "chat":
            delta = DeltaMessage(content=text)
            choice = ChatChunkChoice(
                index=number, delta=delta, logprobs=None, finish_reason=finish_reason
            )
            return self._chat(choice)
        return self._completion_choice(number, text, None, finish_reason)

    def _completion_choice(
        self, index: int, text: str, logprobs: Any, finish_reason: str | None
    ) -> str:
        choice = CompletionChoice(
            index=index, text=text, logprobs=logprobs, finish_reason=finish_reason
        )
        return self._completion(choice)

    def event(self, prompt_index: int, event: StreamEvent) -> list[str]:
        p = self.prepared
        number = choice_index(prompt_index, event.choice, p.n)
        self.generated[number] = self.generated.get(number, 0) + len(event.token_ids)
        if p.kind == "chat":
            return self._chat_event(number, event)
        logprobs = None
        if p.logprobs is not None and event.logprobs is not None:
            tracker = self.offsets.setdefault(number, OffsetTracker())
            logprobs = completion_logprobs(event.logprobs, event.token_ids, tracker)
        if logprobs is not None:
            return [self._completion_choice(number, event.text, logprobs, event.finish_reason)]
        if not event.text and event.finish_reason is None:
            return []  # tokens held back (half a character, a possible stop string)
        return [self._text_chunk(number, event.text, event.finish_reason)]

    def _chat_event(self, number: int, event: StreamEvent) -> list[str]:
        messages = []
        wants_logprobs = self.prepared.chat_logprobs and bool(event.logprobs)
        if wants_logprobs:
            choice = ChatChunkChoice(
                index=number,
                delta=DeltaMessage(content=event.text),
                logprobs=chat_logprobs(event.logprobs or []),
                finish_reason=None,
            )
            messages.append(self._chat(choice))
        elif event.text:
            messages.append(self._text_chunk(number, event.text, None))
        if event.finish_reason is not None:
            messages.append(self.finish_chat(number, event.finish_reason))
        return messages

    def finish_chat(self, number: int, reason: str) -> str:
        choice = ChatChunkChoice(
            index=number, delta=DeltaMessage(), logprobs=None, finish_reason=reason
        )
        return self._chat(choice)

    def finish(self, prompt_index: int, index: int, reason: str | None) -> str:
        number = choice_index(prompt_index, index, self.prepared.n)
        if self.prepared.kind == "chat":
            return self.finish_chat(number, reason or FINISH_LENGTH)
        return self._completion_choice(number, "", None, reason)

    def usage(self, usage: Usage) -> str:
        base = self._base() | {"usage": usage, "choices": []}
        if self.prepared.kind == "chat":
            return sse(ChatCompletionChunk(**base, object="chat.completion.chunk"))
        return sse(CompletionChunk(**base, object="text_completion"))


def echo_only_outputs(prepared: Prepared) -> list[CompletionOutput]:
    """echo with max_tokens=0: the prompt is the whole answer."""
    return [
        CompletionOutput(
            index=index,
            prompt_index=prompt_index,
            text="",
            token_ids=[],
            finish_reason=FINISH_LENGTH,
            prompt_tokens=len(prompt),
            logprobs=[],
        )
        for prompt_index, prompt in enumerate(prepared.prompts)
        for index in range(prepared.n)
    ]
