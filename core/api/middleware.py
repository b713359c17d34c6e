"""Pure ASGI middleware: request ids, the request-body size limit, public static files;
request ids in logs and the process's logging set-up.

Pure ASGI (not BaseHTTPMiddleware) so streaming responses and WebSockets pass through
untouched, and so the body limit is enforced while the body streams in, not after it was
buffered.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from starlette.datastructures import MutableHeaders
from starlette.responses import FileResponse, RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.api.errors import internal_error_response, platform_error_response
from core.config import LoggingSettings
from core.errors import PayloadTooLarge

logger = logging.getLogger(__name__)

WS_CLOSE_TOO_BIG = 1009
request_id_var: ContextVar[str | None] = ContextVar("hatchery_request_id", default=None)
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdMiddleware:
    """Takes X-Request-ID from the client (if sane) or makes one; echoes it on the response.

    Also the last line of defence: an exception no handler took becomes a logged 500 with the
    platform error body (and the request id), instead of a bare server error.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if started or scope["type"] != "http":
                raise
            logger.exception("unhandled error on %s %s", scope.get("method"), scope["path"])
            await internal_error_response()(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name.lower() == b"x-request-id":
            candidate = value.decode("latin-1")
            return candidate if _SAFE_REQUEST_ID.match(candidate) else None
    return None


class _BodyTooLarge(HTTPException):
    """Raised from ``receive``; an HTTPException so FastAPI's body reading passes it on."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body exceeds {limit} bytes")


class BodySizeLimitMiddleware:
    """413 for request bodies over ``max_bytes``: by Content-Length up front, else by counting;
    WebSocket messages over it close the socket with 1009."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._serve_websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _serve_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A message over the limit closes the socket with 1009 (RFC 6455 "message too big");
        the app then sees the client leave, as for any disconnect, and whatever it still
        sends is dropped."""
        closed = False

        async def limited_receive() -> Message:
            nonlocal closed
            message = await receive()
            if message["type"] != "websocket.receive" or not self._too_big(message):
                return message
            reason = f"message exceeds {self.max_bytes} bytes (server.max_body_bytes)"
            closed = True
            await send({"type": "websocket.close", "code": WS_CLOSE_TOO_BIG, "reason": reason})
            return {"type": "websocket.disconnect", "code": WS_CLOSE_TOO_BIG, "reason": reason}

        async def guarded_send(message: Message) -> None:
            if not closed:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)

    def _too_big(self, message: Message) -> bool:
        if (data := message.get("bytes")) is not None:
            return len(data) > self.max_bytes
        text = message.get("text") or ""
        # A character is 1 to 4 bytes: encode only texts whose size is in doubt.
        return len(text) > self.max_bytes or (
            4 * len(text) > self.max_bytes
            and len(text.encode("utf-8", "surrogatepass")) > self.max_bytes
        )

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = PayloadTooLarge(f"request body exceeds {self.max_bytes} bytes")
        response = platform_error_response(error)
        response.headers["Connection"] = "close"  # the rest of the body is never read
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


PUBLIC_PATH_KEY = "hatchery.public_path"


class PublicFilesMiddleware:
    """Serves a few static files by exact path, before authentication (the dashboard shell).

    Only files named up front are served (no directory lookups, so no traversal). They hold no
    data: every call the page makes carries an API key like any other client, so with auth on
    a browser can load the page and then ask for a key. ``redirects`` maps a bare path to its
    slashed form (``/ui`` -> ``/ui/``) so the page's relative links resolve.
    """

    HEADERS = {
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": (
            "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data: blob:; "
            "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
        ),
    }

    def __init__(
        self,
        app: ASGIApp,
        *,
        files: Mapping[str, Path],
        redirects: Mapping[str, str] | None = None,
    ) -> None:
        self.app = app
        self.files = dict(files)
        self.redirects = dict(redirects or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path in self.redirects or path in self.files:
            scope[PUBLIC_PATH_KEY] = path  # the "route template" metrics label it under
        if path in self.redirects:
            target = scope.get("root_path", "") + self.redirects[path]
            await RedirectResponse(target, status_code=307)(scope, receive, send)
        elif path in self.files:
            response = FileResponse(self.files[path], headers=self.HEADERS)
            await response(scope, receive, send)
        else:
            await self.app(scope, receive, send)


# Logging -----------------------------------------------------------------------------------

_record_factory_installed = False


# ``?api_key=`` (streams take keys in the query) in any spelling, up to the next delimiter.
_QUERY_CREDENTIAL = re.compile(r"(?i)\b(api[_-]?key=)[^&\s\"']*")


def redact_credentials(text: str) -> str:
    """``…?api_key=secret&x=1`` -> ``…?api_key=[redacted]&x=1``."""
    return _QUERY_CREDENTIAL.sub(r"\1[redacted]", text)


def _carries_credential(record: logging.LogRecord) -> bool:
    args = record.args
    values = args.values() if isinstance(args, Mapping) else (args or ())
    # str() too: URLs are often logged as objects (httpx.URL, yarl.URL).
    texts = (v if isinstance(v, str) else str(v) for v in (record.msg, *values))
    return any(_QUERY_CREDENTIAL.search(text) is not None for text in texts)


def _redact(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except (TypeError, ValueError):  # a malformed call; logging reports it when formatting
        return
    record.msg, record.args = redact_credentials(message), None


def install_request_id_in_logs() -> None:
    """Give every log record a ``request_id`` attribute ("-" outside requests), and redact
    query-string credentials in every record. Idempotent.

    The redaction sits in the record factory, not in a handler's filter: every record made
    in the process passes it, whichever logger made it (uvicorn's access and error lines,
    a library's warning) and whichever handlers, ours or a test's, receive it.
    """
    global _record_factory_installed
    if _record_factory_installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.request_id = request_id_var.get() or "-"
        if _carries_credential(record):
            _redact(record)
        return record

    logging.setLogRecordFactory(factory)
    _record_factory_installed = True


class JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(payload)


_HANDLER_NAME = "hatchery"


def configure_logging(settings: LoggingSettings) -> None:
    """Root logging as ``logging.level`` / ``logging.json`` say (for the CLI; idempotent)."""
    install_request_id_in_logs()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        JsonLogFormatter()
        if settings.json_format
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    root.addHandler(handler)
    root.setLevel(settings.level)
