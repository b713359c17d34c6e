"""The synchronous client's streams: SSE text of ``/v1`` and interactive generation over
``WS /api/generator/stream`` (httpx and websockets; no state of their own)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from clients._sse import SSEDecoder, TextStream
from clients.errors import RequestTimeout, TransportError, ws_handshake_error
from clients.models import InteractiveEvent

WS_MAX_MESSAGE = 16 * 2**20


def text_pieces(response: httpx.Response, label: str, text: TextStream) -> Iterator[str]:
    decoder = SSEDecoder()
    try:
        for line in response.iter_lines():
            payload = decoder.feed(line)
            if payload is not None:
                yield from text.pieces(payload)
                if text.done:
                    return
        tail = decoder.close()
        if tail is not None:
            yield from text.pieces(tail)
        if not text.done:
            raise TransportError(f"{label}: the stream ended before [DONE]")
    except httpx.TransportError as exc:
        raise transport_error(label, exc) from exc
    finally:
        response.close()


def transport_error(label: str, exc: httpx.TransportError) -> TransportError:
    if isinstance(exc, httpx.TimeoutException):
        return RequestTimeout(f"{label}: no answer in time ({exc!r})", code="timeout")
    return TransportError(f"{label}: {exc!r}", code="connection_error")


def interactive_events(
    url: str,
    request: dict[str, Any],
    parse: Callable[[str | bytes], InteractiveEvent],
    *,
    headers: dict[str, str],
    open_timeout: float,
    idle_timeout: float | None,
) -> Iterator[InteractiveEvent]:
    """Send one request on a new connection; yield its events up to the ``result``.

    Leaving the iterator early closes the connection, which aborts the generation.
    """
    try:
        with ws_connect(
            url,
            additional_headers=headers,
            open_timeout=open_timeout,
            close_timeout=open_timeout,
            max_size=WS_MAX_MESSAGE,
        ) as socket:
            socket.send(json.dumps(request))
            while True:
                event = parse(socket.recv(timeout=idle_timeout))
                yield event
                if event.type == "result":
                    return
    except InvalidStatus as exc:
        answer = exc.response
        raise ws_handshake_error(
            answer.status_code, bytes(answer.body or b""), answer.headers, url
        ) from exc
    except (ConnectionClosed, OSError) as exc:  # OSError: refused, reset, TimeoutError
        raise TransportError(f"WS {url}: {exc!r}", code="connection_error") from exc
