"""A small OpenAI-compatible `/v1/completions` endpoint: the protocol only, no model.

Streams one chunk per requested token (`"a"`, with a short sleep before each), then a usage
chunk when `stream_options.include_usage` is set, then `data: [DONE]`. `fail_every=k` answers
every k-th request (1-based) with a 500 and the OpenAI error body; `garbled=True` streams a
chunk that is not JSON.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Body, FastAPI
from fastapi.responses import JSONResponse, StreamingResponse


def _chunk(text: str, finish: str | None) -> dict[str, Any]:
    return {
        "id": "cmpl-fake",
        "object": "text_completion",
        "created": 0,
        "model": "fake",
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }


def _usage(prompt: str, completion_tokens: int) -> dict[str, int]:
    prompt_tokens = len(prompt.encode())
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def fake_openai_router(
    *, token_delay_s: float = 0.001, fail_every: int = 0, garbled: bool = False
) -> APIRouter:
    router = APIRouter()
    counter = itertools.count(1)

    @router.post("/v1/completions")
    async def completions(body: dict[str, Any] = Body(...)) -> Any:
        number = next(counter)
        if fail_every and number % fail_every == 0:
            error = {
                "message": "synthetic failure",
                "type": "server_error",
                "param": None,
                "code": "internal_error",
            }
            return JSONResponse({"error": error}, status_code=500)
        tokens = int(body["max_tokens"])
        prompt = str(body["prompt"])
        if not body.get("stream"):
            await asyncio.sleep(token_delay_s * tokens)
            return {**_chunk("a" * tokens, "length"), "usage": _usage(prompt, tokens)}
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events() -> AsyncIterator[str]:
            if garbled:
                yield 'data: {"choices": [\n\n'
            for index in range(tokens):
                await asyncio.sleep(token_delay_s)
                finish = "length" if index == tokens - 1 else None
                yield f"data: {json.dumps(_chunk('a', finish))}\n\n"
            if include_usage:
                usage = {**_chunk("", None), "choices": [], "usage": _usage(prompt, tokens)}
                yield f"data: {json.dumps(usage)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return router


def fake_openai_app(**options: Any) -> FastAPI:
    app = FastAPI()
    app.include_router(fake_openai_router(**options))
    return app
