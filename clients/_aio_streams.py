"""The asyncio client's streams: SSE text of ``/v1``, interactive generation over
``WS /api/generator/stream`` and a run's events over one WebSocket connection (aiohttp; no
state of their own)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp

from clients._follow import EventCursor
from clients._sse import SSEDecoder, TextStream
from clients.errors import RequestTimeout, TransportError, ws_handshake_error
from clients.models import InteractiveEvent, RunEventPublic

TRANSPORT = (aiohttp.ClientError, asyncio.TimeoutError)
WS_MAX_MESSAGE = 16 * 2**20
_WS_ENDED = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)


async def text_pieces(
    response: aiohttp.ClientResponse, label: str, text: TextStream
) -> AsyncIterator[str]:
    decoder = SSEDecoder()
    try:
        async for raw in response.content:
            payload = decoder.feed(raw.decode("utf-8").rstrip("\n"))
            if payload is not None:
                for piece in text.pieces(payload):
                    yield piece
                if text.done:
                    return
        tail = decoder.close()
        for piece in text.pieces(tail) if tail is not None else []:
            yield piece
        if not text.done:
            raise TransportError(f"{label}: the stream ended before [DONE]")
    except TRANSPORT as exc:
        raise transport_error(label, exc) from exc
    finally:
        response.release()


def transport_error(label: str, exc: BaseException) -> TransportError:
    if isinstance(exc, asyncio.TimeoutError):
        return RequestTimeout(f"{label}: no answer in time ({exc!r})", code="timeout")
    return TransportError(f"{label}: {exc!r}", code="connection_error")


async def interactive_events(
    session: Callable[[], aiohttp.ClientSession],
    url: str,
    request: dict[str, Any],
    parse: Callable[[str | bytes], InteractiveEvent],
    *,
    headers: dict[str, str],
    close_timeout: float,
    idle_timeout: float | None,
) -> AsyncIterator[InteractiveEvent]:
    """Send one request on a new connection; yield its events up to the ``result``.

    Leaving the iterator early closes the connection, which aborts the generation.
    """
    timeout = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=close_timeout)
    try:
        # The session is only reached here, inside the running loop that iterates.
        async with session().ws_connect(
            url, headers=headers, timeout=timeout, max_msg_size=WS_MAX_MESSAGE
        ) as socket:
            await socket.send_str(json.dumps(request))
            while True:
                message = await socket.receive(timeout=idle_timeout)
                if message.type != aiohttp.WSMsgType.TEXT:
                    raise TransportError(
                        f"WS {url}: the connection ended ({message.type.name})",
                        code="connection_error",
                    )
                event = parse(message.data)
                yield event
                if event.type == "result":
                    return
    except aiohttp.WSServerHandshakeError as exc:
        raise ws_handshake_error(exc.status, b"", exc.headers or {}, url) from exc
    except (*TRANSPORT, OSError) as exc:
        raise TransportError(f"WS {url}: {exc!r}", code="connection_error") from exc


async def socket_events(
    socket: aiohttp.ClientWebSocketResponse, cursor: EventCursor, idle_timeout: float | None
) -> AsyncIterator[RunEventPublic]:
    """A run's events on one connection, until it closes or breaks (`cursor` is told which)."""
    cursor.connected()
    while not cursor.finished:
        message = await socket.receive(timeout=idle_timeout)
        if message.type == aiohttp.WSMsgType.TEXT:
            event = cursor.accept(message.data)
            if event is not None:
                yield event
        elif message.type in _WS_ENDED:
            code = message.data if message.type == aiohttp.WSMsgType.CLOSE else None
            cursor.closed(code or socket.close_code, str(message.extra or ""))
            return
        else:  # ERROR, or a binary frame this protocol never sends
            cursor.broken(socket.exception() or ValueError(message.type))
            return
