"""The one place that turns exceptions into HTTP error bodies.

Whatever goes wrong — a PlatformError raised by a route, a validation error, a Starlette
HTTPException (404 route, 405, 413…) or a bug — the client gets
``{"error": {"message", "type", "param", "code"}}`` and never FastAPI's ``detail`` shape.
Unexpected errors are logged with their traceback and answered with a bare 500 that
leaks nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from core.api.request_model import INVALID_UTF8
from core.errors import PlatformError, StoreUnavailable, error_body

logger = logging.getLogger(__name__)

# OpenAI-compatible routes answer bad input with 400, as OpenAI does; the rest use 422.
OPENAI_PATH_PREFIXES = ("/v1/", "/tokenize", "/detokenize")
_REQUEST_LOCATIONS = {"body", "query", "path", "header", "cookie"}

_HTTP_CODES: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    406: ("invalid_request_error", "not_acceptable"),
    409: ("conflict_error", "conflict"),
    413: ("invalid_request_error", "payload_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    422: ("invalid_request_error", "invalid_request"),
    429: ("rate_limit_error", "rate_limited"),
    503: ("overloaded_error", "overloaded"),
}


def platform_error_response(exc: PlatformError) -> JSONResponse:
    return JSONResponse(exc.to_body(), status_code=exc.status_code, headers=exc.headers or None)


def internal_error_response() -> JSONResponse:
    body = error_body(
        message="internal server error", type="server_error", param=None, code="internal_error"
    )
    return JSONResponse(body, status_code=500)


async def _platform_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PlatformError)
    return platform_error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    params = [_param(error, exc.body) for error in errors]
    parts = [
        f"{p or 'body'}: {error.get('msg', 'invalid')}"
        for p, error in zip(params, errors, strict=True)
    ]
    status = 400 if request.url.path.startswith(OPENAI_PATH_PREFIXES) else 422
    body = error_body(
        message="; ".join(parts[:5]) or "invalid request",
        type="invalid_request_error",
        param=params[0] if params else None,
        code=validation_code(errors),
    )
    return JSONResponse(body, status_code=status)


# Validation error types that are a code of their own (see core.api.request_model).
_CODED_VALIDATION_ERRORS = frozenset({INVALID_UTF8})


def validation_code(errors: Sequence[Any]) -> str:
    """The error code for a list of pydantic errors: a coded type, else invalid_request."""
    for error in errors:
        if error.get("type") in _CODED_VALIDATION_ERRORS:
            return str(error["type"])
    return "invalid_request"


def _param(error: Any, body: Any) -> str | None:
    parts = [str(part) for part in error.get("loc", ())]
    if parts and parts[0] in _REQUEST_LOCATIONS:
        parts = parts[1:]
    if parts and isinstance(body, dict) and body.get("kind") == parts[0]:
        parts = parts[1:]  # the union member's tag, not a field the client sent
    discriminator = (error.get("ctx") or {}).get("discriminator")
    if isinstance(discriminator, str):  # a bad or missing "kind": name that field
        parts.append(discriminator.strip("'\""))
    return ".".join(parts) or None


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    type_, code = _HTTP_CODES.get(
        exc.status_code,
        ("server_error", "internal_error")
        if exc.status_code >= 500
        else ("invalid_request_error", "http_error"),
    )
    message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    body = error_body(message=message, type=type_, param=None, code=code)
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


# A store that cannot be reached (connection refused or dropped, pool exhausted) is a passing
# condition, not a bug: 503 with Retry-After, one log line without a traceback.
STORE_DOWN = (OperationalError, InterfaceError, SQLAlchemyTimeoutError)


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    logger.warning(
        "store unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__
    )
    return platform_error_response(
        StoreUnavailable("the run store is unreachable; retry shortly", retry_after=1)
    )


async def _internal_error(request: Request, exc: Exception) -> Response:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return internal_error_response()


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(PlatformError, _platform_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    for store_error in STORE_DOWN:
        app.add_exception_handler(store_error, _store_unavailable)
    app.add_exception_handler(Exception, _internal_error)
