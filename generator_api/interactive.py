"""``WS /api/generator/stream``: interactive generation over one WebSocket.

Client messages are JSON objects::

    {"id": "q1", "model": "bdh-shakespeare", "prompt": "ROMEO:", "max_tokens": 64}
    {"id": "q2", "type": "chat", "model": "...", "messages": [{"role": "user", ...}]}
    {"type": "cancel"}        # abort the request being generated
    {"type": "ping"}          # answered with {"type": "pong"}

A request is an OpenAI completion (or, with ``"type": "chat"`` or a ``messages`` field, chat
completion) body; ``stream`` fields are ignored. The server answers each request, in order,
with ``token`` events ``{"type": "token", "id", "data": {prompt_index, choice, text}}`` (the
last one of each choice also carries ``finish_reason``), then one ``result`` event whose
``data`` is the OpenAI response object — or one ``error`` event ``{"type": "error", "id",
"status", "data": {message, type, param, code}}`` (``status``: the HTTP status of the same
error on ``/v1``). The connection stays open for further requests;
closing it aborts the current generation.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from fastapi import APIRouter, WebSocket
from pydantic import BaseModel, ValidationError
from starlette.websockets import WebSocketDisconnect

from core.api.errors import validation_code
from core.engine.stream import GenerationError
from core.errors import InvalidRequest, PlatformError

from .generation import Generation
from .openai import get_serving
from .openai_chunks import Prepared
from .openai_protocol import ChatCompletionRequest, CompletionRequest
from .openai_serving import OpenAIServing

logger = logging.getLogger(__name__)

_IGNORED_FIELDS = ("stream", "stream_options")


class _Closed(Exception):
    """The client has gone; stop serving the connection."""


def add_interactive_route(router: APIRouter) -> None:
    @router.websocket("/stream")
    async def generator_stream(websocket: WebSocket) -> None:
        await websocket.accept()
        await _Session(websocket, get_serving(websocket)).serve()


class _Session:
    def __init__(self, websocket: WebSocket, serving: OpenAIServing) -> None:
        self.websocket = websocket
        self.serving = serving
        self.requests: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.current: Generation | None = None
        self.send_lock = asyncio.Lock()

    async def serve(self) -> None:
        reader = asyncio.create_task(self._read())
        try:
            while (message := await self.requests.get()) is not None:
                await self._handle(message)
        except _Closed:
            pass
        finally:
            reader.cancel()
            self._abort()

    async def _read(self) -> None:
        """Read messages while generation runs, so a cancel or ping is handled at once."""
        try:
            while True:
                message = _parse(await self.websocket.receive_text())
                kind = message.get("type") if message is not None else None
                if message is None:
                    error = InvalidRequest("messages must be JSON objects", code="invalid_message")
                    await self._send_error(None, error)
                elif kind == "ping":
                    await self._send({"type": "pong"})
                elif kind == "cancel":
                    self._abort()
                else:
                    self.requests.put_nowait(message)
        except (WebSocketDisconnect, _Closed, RuntimeError):
            pass
        finally:
            self._abort()
            self.requests.put_nowait(None)

    async def _handle(self, message: dict[str, Any]) -> None:
        request_id = message.pop("id", None)
        try:
            prepared = await self._prepare(message)
        except PlatformError as exc:
            await self._send_error(request_id, exc)
            return
        self.current = prepared.generation
        try:
            if prepared.generation is not None:
                await self._stream_tokens(request_id, prepared.generation)
            response = await self.serving.respond(prepared)
        except GenerationError as exc:
            error = PlatformError(f"generation failed: {exc}", code="generation_failed")
            await self._send_error(request_id, error)
            return
        except PlatformError as exc:
            await self._send_error(request_id, exc)
            return
        finally:
            self.current = None
        await self._send(
            {"type": "result", "id": request_id, "data": response.model_dump(mode="json")}
        )

    async def _prepare(self, message: dict[str, Any]) -> Prepared:
        kind = message.pop("type", None) or ("chat" if "messages" in message else "completion")
        for name in _IGNORED_FIELDS:
            message.pop(name, None)
        model: type[BaseModel]
        if kind == "chat":
            model = ChatCompletionRequest
        elif kind == "completion":
            model = CompletionRequest
        else:
            raise InvalidRequest(
                f"unknown message type {kind!r}", param="type", code="invalid_message"
            )
        try:
            request = model.model_validate(message)
        except ValidationError as exc:
            raise _invalid(exc) from None
        if isinstance(request, ChatCompletionRequest):
            return await self.serving.prepare_chat(request)
        assert isinstance(request, CompletionRequest)
        return await self.serving.prepare_completion(request)

    async def _stream_tokens(self, request_id: Any, generation: Generation) -> None:
        async with generation:
            async for prompt_index, event in generation.events():
                if not event.text and event.finish_reason is None:
                    continue
                data: dict[str, Any] = {
                    "prompt_index": prompt_index,
                    "choice": event.choice,
                    "text": event.text,
                }
                if event.finish_reason is not None:
                    data["finish_reason"] = event.finish_reason
                await self._send({"type": "token", "id": request_id, "data": data})

    def _abort(self) -> None:
        if self.current is not None:
            self.current.abort()

    async def _send_error(self, request_id: Any, error: PlatformError) -> None:
        body = error.to_body()["error"]
        # "status": the HTTP status the same error gets on /v1, so clients map it alike.
        await self._send(
            {"type": "error", "id": request_id, "status": error.status_code, "data": body}
        )

    async def _send(self, payload: dict[str, Any]) -> None:
        async with self.send_lock:
            try:
                await self.websocket.send_text(json.dumps(payload, separators=(",", ":")))
            except (WebSocketDisconnect, RuntimeError, OSError) as exc:
                raise _Closed() from exc


def _parse(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _invalid(exc: ValidationError) -> InvalidRequest:
    errors = exc.errors()
    parts = [
        f"{'.'.join(str(p) for p in error['loc']) or 'body'}: {error['msg']}" for error in errors
    ]
    param = ".".join(str(p) for p in errors[0]["loc"]) if errors else None
    return InvalidRequest("; ".join(parts[:5]), param=param or None, code=validation_code(errors))
