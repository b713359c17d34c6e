"""What an OpenAI-compatible response must look like: pure checks on bodies and SSE streams.

Each ``check_*`` raises ``CaseFailed`` naming the first thing that is wrong, and returns the
facts the endpoint suite compares across cases (text, finish reason, usage).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from test_api.cases import CaseFailed, expect

FINISH_REASONS = ("stop", "length")
DONE = "[DONE]"


@dataclass
class Completion:
    """The parts of a (streamed or whole) response the cases compare."""

    text: str
    finish_reason: str | None
    usage: dict[str, Any] | None
    chunks: int = 0


@dataclass
class SseStream:
    status: int
    content_type: str
    payloads: list[str] = field(default_factory=list)  # the data of each event, in order
    body: bytes = b""  # the whole body when the answer was not a stream


def check_usage(usage: Any, max_tokens: int | None = None) -> dict[str, int]:
    expect(isinstance(usage, dict), "usage is missing", usage=usage)
    counts: dict[str, int] = {}
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = usage.get(key)
        is_count = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        expect(is_count, f"usage.{key} is not a count", usage=usage)
        counts[key] = value
    total = counts["prompt_tokens"] + counts["completion_tokens"]
    expect(counts["total_tokens"] == total, "total_tokens is not the sum", usage=usage)
    expect(counts["prompt_tokens"] > 0, "prompt_tokens is zero", usage=usage)
    if max_tokens is not None:
        over = counts["completion_tokens"] > max_tokens
        expect(not over, "more completion tokens than max_tokens", usage=usage)
    return counts


def _only_choice(body: dict[str, Any]) -> dict[str, Any]:
    choices: Any = body.get("choices")
    expect(isinstance(choices, list) and len(choices) == 1, "expected one choice", body=body)
    choice: Any = choices[0]
    expect(isinstance(choice, dict) and choice.get("index") == 0, "bad choice", choice=choice)
    reason = choice.get("finish_reason")
    expect(reason in FINISH_REASONS, "bad finish_reason", finish_reason=reason)
    return dict(choice)


def _envelope(body: Any, obj: str) -> dict[str, Any]:
    expect(isinstance(body, dict), "the body is not a JSON object", body=body)
    expect(body.get("object") == obj, f"object is not {obj!r}", object=body.get("object"))
    expect(isinstance(body.get("id"), str) and body["id"], "id is missing", id=body.get("id"))
    expect(isinstance(body.get("created"), int), "created is not an integer")
    expect(isinstance(body.get("model"), str), "model is missing")
    return dict(body)


def check_completion(body: Any, max_tokens: int) -> Completion:
    body = _envelope(body, "text_completion")
    choice = _only_choice(body)
    expect(isinstance(choice.get("text"), str), "choice text is not a string", choice=choice)
    usage = check_usage(body.get("usage"), max_tokens)
    return Completion(choice["text"], choice["finish_reason"], usage)


def check_chat(body: Any, max_tokens: int) -> Completion:
    body = _envelope(body, "chat.completion")
    choice = _only_choice(body)
    message = choice.get("message")
    expect(isinstance(message, dict), "choice has no message", choice=choice)
    assert isinstance(message, dict)
    expect(message.get("role") == "assistant", "message role is not assistant", message=message)
    expect(isinstance(message.get("content"), str), "message content is not a string")
    usage = check_usage(body.get("usage"), max_tokens)
    return Completion(message["content"], choice["finish_reason"], usage)


def check_error(status: int, body: bytes) -> dict[str, Any]:
    """A 4xx answer with the OpenAI error body ``{"error": {message, type, param, code}}``."""
    expect(400 <= status < 500, f"bad input answered {status}, not a 4xx", status=status)
    try:
        data = json.loads(body)
    except ValueError:
        text = body[:200].decode(errors="replace")
        raise CaseFailed("the error body is not JSON", body=text) from None
    error = data.get("error") if isinstance(data, dict) else None
    expect(isinstance(error, dict), "no 'error' object in the error body", body=data)
    assert isinstance(error, dict)
    expect(isinstance(error.get("message"), str), "error.message is missing", error=error)
    expect(isinstance(error.get("type"), str), "error.type is missing", error=error)
    expect("code" in error and "param" in error, "error.code / error.param missing", error=error)
    return {"status": status, "type": error["type"], "code": error.get("code")}


# Streams ------------------------------------------------------------------------------------


def sse_payloads(lines: list[str]) -> tuple[list[str], list[str]]:
    """Events' data from SSE lines, and the lines that are not SSE at all."""
    payloads: list[str] = []
    strange: list[str] = []
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                payloads.append("\n".join(data))
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif not line.startswith((":", "event:", "id:", "retry:")):
            strange.append(line)
    if data:
        payloads.append("\n".join(data))
    return payloads, strange


def check_stream(stream: SseStream, obj: str, chat: bool, max_tokens: int) -> Completion:
    """A 200 text/event-stream of ``obj`` chunks, one final usage chunk, one ``[DONE]`` last."""
    expect(stream.status == 200, "the stream was not answered 200", status=stream.status)
    content_type = stream.content_type.split(";")[0].strip()
    expect(content_type == "text/event-stream", "wrong content type", content_type=content_type)
    dones = stream.payloads.count(DONE)
    expect(dones == 1, f"[DONE] sent {dones} times", done_events=dones)
    expect(stream.payloads[-1] == DONE, "[DONE] is not the last event")
    chunks = [_chunk(payload, obj) for payload in stream.payloads[:-1]]
    expect(bool(chunks), "no chunks before [DONE]")
    usage_chunks = [c for c in chunks if c.get("usage")]
    expect(len(usage_chunks) == 1, "expected exactly one usage chunk", found=len(usage_chunks))
    expect(usage_chunks[0] is chunks[-1], "the usage chunk is not the last chunk")
    expect(chunks[-1].get("choices") == [], "the usage chunk has choices")
    usage = check_usage(chunks[-1]["usage"], max_tokens)
    text, reasons = _stream_text(chunks[:-1], chat)
    expect(len(reasons) == 1, "expected one finish_reason in the stream", finish_reasons=reasons)
    expect(reasons[0] in FINISH_REASONS, "bad finish_reason", finish_reason=reasons[0])
    return Completion(text, reasons[0], usage, chunks=len(chunks))


def _chunk(payload: str, obj: str) -> dict[str, Any]:
    try:
        chunk = json.loads(payload)
    except ValueError:
        raise CaseFailed("a stream event is not JSON", event=payload[:200]) from None
    expect(isinstance(chunk, dict), "a stream event is not a JSON object", event=payload[:200])
    expect(chunk.get("object") == obj, f"chunk object is not {obj!r}", object=chunk.get("object"))
    expect(isinstance(chunk.get("choices"), list), "chunk has no choices list", chunk=chunk)
    return dict(chunk)


def _stream_text(chunks: list[dict[str, Any]], chat: bool) -> tuple[str, list[str]]:
    pieces, reasons, roles = [], [], []
    for chunk in chunks:
        for choice in chunk["choices"]:
            expect(choice.get("index") == 0, "a chunk choice has index != 0", choice=choice)
            if chat:
                delta = choice.get("delta")
                expect(isinstance(delta, dict), "a chat chunk has no delta", choice=choice)
                if "role" in delta:
                    roles.append(delta["role"])
                pieces.append(delta.get("content") or "")
            else:
                expect(isinstance(choice.get("text"), str), "a chunk has no text", choice=choice)
                pieces.append(choice["text"])
            if choice.get("finish_reason") is not None:
                reasons.append(choice["finish_reason"])
    if chat:
        expect(roles[:1] == ["assistant"], "the first delta does not set role assistant")
    return "".join(pieces), reasons
