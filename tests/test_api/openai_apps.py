"""Small OpenAI-compatible apps for the endpoint suite's tests: one that conforms, and one
with deliberate faults.

Both "generate" a fixed text, one character per token, so answers are deterministic.
The faulty app sends ``[DONE]`` twice, ignores stop strings, answers bad input with FastAPI's
422 ``{"detail": ...}`` and accepts any model name.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

MODEL = "fake-model"
CONTINUATION = "once upon a time, there was a small test. " * 20


class Message(BaseModel):
    role: str
    content: str


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Request(BaseModel):
    model: str
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None


class CompletionRequest(_Request):
    prompt: str


class ChatRequest(_Request):
    messages: list[Message]


def _error(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param}}
    body["error"]["code"] = code
    return JSONResponse(body, status_code=status)


def _generate(request: _Request, honour_stop: bool) -> tuple[str, str]:
    text, reason = CONTINUATION[: request.max_tokens], "length"
    stops = [request.stop] if isinstance(request.stop, str) else request.stop or []
    hits = [text.find(stop) for stop in stops if honour_stop and stop in text]
    if hits:
        text, reason = text[: min(hits)], "stop"
    return text, reason


def _usage(prompt: str, text: str) -> dict[str, int]:
    prompt_tokens, completion_tokens = len(prompt.encode()), len(text)
    total = prompt_tokens + completion_tokens
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": total,
    }


def create_openai_app(conforming: bool = True) -> FastAPI:
    app = FastAPI()

    if conforming:

        @app.exception_handler(RequestValidationError)
        async def bad_input(_request: Request, exc: Exception) -> JSONResponse:
            return _error(400, str(exc)[:200], "invalid_request")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        entry = {"id": MODEL, "object": "model", "created": 0, "owned_by": "tests"}
        return {"object": "list", "data": [entry]}

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest) -> Any:
        return _answer(body, body.prompt, "text_completion", conforming)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatRequest) -> Any:
        prompt = "\n".join(m.content for m in body.messages)
        return _answer(body, prompt, "chat.completion", conforming)

    return app


def _answer(body: _Request, prompt: str, obj: str, conforming: bool) -> Any:
    if conforming and body.model != MODEL:
        return _error(404, f"model {body.model!r} does not exist", "model_not_found", "model")
    text, reason = _generate(body, honour_stop=conforming)
    usage = _usage(prompt, text)
    head = {"id": "cmpl-1", "created": int(time.time()), "model": body.model}
    kind: Literal["text", "chat"] = "chat" if obj.startswith("chat") else "text"
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _events(head, kind, text, reason, usage if include_usage else None, conforming)
        return StreamingResponse(events, media_type="text/event-stream")
    if kind == "chat":
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "finish_reason": reason}
    else:
        choice = {"index": 0, "text": text, "finish_reason": reason}
    return head | {"object": obj, "choices": [choice], "usage": usage}


def _events(
    head: dict[str, Any],
    kind: str,
    text: str,
    reason: str,
    usage: dict[str, int] | None,
    conforming: bool,
) -> Iterator[str]:
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

    def chunk(piece: str, finish: str | None, first: bool = False) -> str:
        if kind == "chat":
            delta = {"role": "assistant", "content": piece} if first else {"content": piece}
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": piece, "finish_reason": finish}
        return f"data: {json.dumps(head | {'object': obj, 'choices': [choice]})}\n\n"

    for index, char in enumerate(text):
        yield chunk(char, None, first=index == 0)
    yield chunk("", reason, first=not text)
    if usage is not None:
        yield f"data: {json.dumps(head | {'object': obj, 'choices': [], 'usage': usage})}\n\n"
    yield "data: [DONE]\n\n"
    if not conforming:
        yield "data: [DONE]\n\n"
