"""Stream chunks: the per-token text chunk, filled into a pre-rendered template, is byte for
byte the chunk pydantic renders from the protocol models."""

from __future__ import annotations

import pytest

from core.engine.stream import StreamEvent
from generator_api.openai_chunks import SYSTEM_FINGERPRINT, ChunkWriter, Prepared
from generator_api.openai_protocol import (
    ChatChunkChoice,
    ChatCompletionChunk,
    CompletionChoice,
    CompletionChunk,
    DeltaMessage,
)
from generator_api.openai_render import sse

TEXTS = [
    "a",
    'quote " and backslash \\ ',
    "line\nfeed\ttab\r\x08\x0c",
    "\x00\x01\x1f\x7f",
    "é café 日本 🐉",
    "\u2028\u2029",
    "\ufffd",
    "</script>&<>",
]


def _prepared(kind: str, include_usage: bool, n: int = 1) -> Prepared:
    return Prepared(
        kind=kind,  # type: ignore[arg-type]
        id="cmpl-0123abc",
        model="bdh-nano",
        prompts=[[65, 66], [67]],
        n=n,
        generation=None,
        include_usage=include_usage,
    )


def _pydantic_chunk(prepared: Prepared, number: int, text: str, reason: str | None) -> str:
    """The chunk as `ChunkWriter` rendered every token before the templates."""
    base: dict[str, object] = {
        "id": prepared.id,
        "created": prepared.created,
        "model": prepared.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    if prepared.include_usage:
        base["usage"] = None
    if prepared.kind == "chat":
        choice = ChatChunkChoice(
            index=number, delta=DeltaMessage(content=text), logprobs=None, finish_reason=reason
        )
        return sse(ChatCompletionChunk(**base, object="chat.completion.chunk", choices=[choice]))
    completion = CompletionChoice(index=number, text=text, logprobs=None, finish_reason=reason)
    return sse(CompletionChunk(**base, object="text_completion", choices=[completion]))


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("kind", ["completion", "chat"])
def test_text_chunks_are_what_pydantic_renders(kind: str, include_usage: bool) -> None:
    prepared = _prepared(kind, include_usage, n=2)
    writer = ChunkWriter(prepared)
    for prompt_index, choice in ((0, 0), (0, 1), (1, 0)):
        number = prompt_index * 2 + choice
        for text in TEXTS:
            (chunk,) = writer.event(prompt_index, StreamEvent(choice, text, [65]))
            assert chunk == _pydantic_chunk(prepared, number, text, None)
    if kind == "completion":  # a completion's last chunk carries its finish reason
        (last,) = writer.event(0, StreamEvent(1, "é\n", [65], finish_reason="length"))
        assert last == _pydantic_chunk(prepared, 1, "é\n", "length")
        (stop,) = writer.event(1, StreamEvent(0, "", [65], finish_reason="stop"))
        assert stop == _pydantic_chunk(prepared, 2, "", "stop")


def test_tokens_held_back_send_nothing() -> None:
    for kind in ("completion", "chat"):
        writer = ChunkWriter(_prepared(kind, include_usage=False))
        assert writer.event(0, StreamEvent(0, "", [0xE6])) == []
