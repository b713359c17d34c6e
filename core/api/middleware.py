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
    """413 for request bodies over ``max_bytes``: by Content-Length up front, else by counting."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
            "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
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


def install_request_id_in_logs() -> None:
    """Give every log record a ``request_id`` attribute ("-" outside requests). Idempotent."""
    global _record_factory_installed
    if _record_factory_installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.request_id = request_id_var.get() or "-"
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
