"""Following a run live: the WebSocket and Server-Sent Events routes of the convention.

Both replay stored events with seq > ``after`` and then stream live ones (``events.follow``),
and both end after the terminal status event. The WebSocket closes with 1000 then, 4404 for
an unknown run, and 4401 (from the auth middleware) without a valid key.
"""

# No "from __future__ import annotations": FastAPI reads these signatures at runtime.

import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnected

from core.api.deps import EventBusDep, RunServiceDep, get_event_bus, get_run_service
from core.api.params import MAX_INT32, AfterSeq
from core.api.security import get_principal
from core.errors import InvalidRequest, NotFound
from core.runs.events import EventBus, follow
from core.runs.service import RunService
from core.store.models import Run, RunEventPublic

logger = logging.getLogger(__name__)

WS_CLOSE_NOT_FOUND = 4404
WS_CLOSE_BAD_REQUEST = 4400
_BAD_AFTER = f"after must be an event seq, an integer from 0 to {MAX_INT32}"


def add_stream_routes(
    router: APIRouter, component: str, ValidRun: Any, *, ping_interval_s: float
) -> None:
    """Add ``WS /ws/{run_id}`` and ``GET /events/{run_id}``; ``ValidRun`` loads the run."""

    @router.websocket("/ws/{run_id}")
    async def follow_ws(websocket: WebSocket, run_id: str) -> None:
        await websocket.accept()
        # Parsed here, not by FastAPI: a query that fails validation before the accept
        # reaches the client as a bare HTTP 403, without a code or a reason.
        after = _parse_seq(websocket.query_params.get("after", "0"))
        if after is None:
            await websocket.close(code=WS_CLOSE_BAD_REQUEST, reason=_BAD_AFTER)
            return
        service = get_run_service(websocket)
        principal = get_principal(websocket)
        get = functools.partial(
            service.get, run_id=run_id, component=component, visible_to=principal.visible_to
        )
        try:
            run = await run_in_threadpool(get)
        except NotFound:
            await websocket.close(code=WS_CLOSE_NOT_FOUND, reason="run not found")
            return
        follower = _WebSocketFollower(websocket, service, get_event_bus(websocket), run)
        await follower.serve(after, ping_interval_s)

    @router.get(
        "/events/{run_id}",
        operation_id=f"{component}_events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "Event stream"}},
    )
    async def follow_sse(
        run: ValidRun,
        service: RunServiceDep,
        bus: EventBusDep,
        after: AfterSeq | None = None,
        last_event_id: Annotated[str | None, Header(max_length=32)] = None,
    ) -> StreamingResponse:
        start = max(after or 0, _parse_last_event_id(last_event_id))
        stream = _sse_stream(bus, service, run.id, start, ping_interval_s)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


def _loader(service: RunService, run_id: str) -> Any:
    async def load_after(after: int) -> tuple[list[RunEventPublic], bool]:
        return await run_in_threadpool(
            functools.partial(service.events_after, run_id=run_id, after=after)
        )

    return load_after


def _parse_seq(value: str) -> int | None:
    """An event seq from a query or header value; None when it is not one."""
    try:
        seq = int(value.strip())
    except ValueError:
        return None
    return seq if 0 <= seq <= MAX_INT32 else None


def _parse_last_event_id(value: str | None) -> int:
    if value is None or not value.strip():
        return 0
    seq = _parse_seq(value)
    if seq is None:
        message = f"Last-Event-ID must be an event seq, an integer from 0 to {MAX_INT32}"
        raise InvalidRequest(message, param="Last-Event-ID", code="invalid_last_event_id")
    return seq


async def _sse_stream(
    bus: EventBus, service: RunService, run_id: str, after: int, idle_s: float
) -> AsyncIterator[str]:
    yield "retry: 2000\n\n"
    events = follow(bus, run_id, _loader(service, run_id), after=after, idle_s=idle_s)
    async with contextlib.aclosing(events) as stream:
        async for event in stream:
            if event is None:
                yield ": ping\n\n"  # a comment: keeps proxies from timing the stream out
            else:
                yield f"id: {event.seq}\nevent: {event.type}\ndata: {event.model_dump_json()}\n\n"


class _WebSocketFollower:
    """One WebSocket following one run: a writer streaming events, a reader taking commands."""

    def __init__(self, websocket: WebSocket, service: RunService, bus: EventBus, run: Run) -> None:
        self.websocket = websocket
        self.service = service
        self.bus = bus
        self.run = run
        self._send_lock = anyio.Lock()

    async def serve(self, after: int, idle_s: float) -> None:
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._read_commands, tasks.cancel_scope)
                await self._write_events(after, idle_s)
                await self.websocket.close(code=1000)
                tasks.cancel_scope.cancel()
        except* (WebSocketDisconnect, WebSocketDisconnected, OSError):
            logger.debug("follower of run %s left", self.run.id)

    async def _write_events(self, after: int, idle_s: float) -> None:
        loader = _loader(self.service, self.run.id)
        events = follow(self.bus, self.run.id, loader, after=after, idle_s=idle_s)
        async with contextlib.aclosing(events) as stream:
            async for event in stream:
                if event is None:
                    await self._send({"type": "ping"})
                else:
                    await self._send_text(event.model_dump_json())

    async def _read_commands(self, scope: anyio.CancelScope) -> None:
        try:
            while True:
                text = await self.websocket.receive_text()
                await self._handle(text)
        except (WebSocketDisconnect, WebSocketDisconnected):
            scope.cancel()  # the client left: stop writing too

    async def _handle(self, text: str) -> None:
        try:
            command = json.loads(text)
            kind = command.get("type") if isinstance(command, dict) else None
        except json.JSONDecodeError:
            kind = None
        if kind == "ping":
            await self._send({"type": "pong"})
        elif kind == "cancel":
            await run_in_threadpool(functools.partial(self.service.cancel, run_id=self.run.id))
        else:
            error = InvalidRequest(
                'expected {"type": "ping"} or {"type": "cancel"}', code="invalid_message"
            )
            await self._send({"type": "error", **error.to_body()})

    async def _send(self, payload: dict[str, Any]) -> None:
        await self._send_text(json.dumps(payload))

    async def _send_text(self, text: str) -> None:
        async with self._send_lock:
            await self.websocket.send_text(text)
