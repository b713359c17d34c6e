"""The exceptions both clients raise, and the mapping from an HTTP error answer to one of them.

::

    HatcheryError                 (base: status_code, code, param, type, retry_after, body)
    ├── ValidationFailed          400, 413, 422   bad input (code e.g. "invalid_request")
    ├── Unauthorized              401, 403        missing or wrong API key
    ├── NotFound                  404             unknown run, model or route
    ├── Conflict                  409             e.g. "run_not_finished"
    ├── RateLimited               429             retry_after from Retry-After
    ├── ServerError               5xx             e.g. "overloaded" (503), "not_ready"
    ├── TransportError            no answer: the connection failed or timed out
    │   └── RequestTimeout
    └── MonitorTimeout            a monitor_* call gave up waiting (also a TimeoutError)

The server answers every error with ``{"error": {"message", "type", "param", "code"}}``
(DESIGN §2); a body of another shape (a proxy's HTML page) still maps by status code.
"""

from __future__ import annotations

import email.utils
import json
import math
from datetime import UTC, datetime
from typing import Any


class HatcheryError(Exception):
    """Base of every error the clients raise."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        retry_after: float | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.param = param
        self.type = type
        self.retry_after = retry_after
        self.body = body

    def __str__(self) -> str:
        prefix = f"{self.status_code} " if self.status_code is not None else ""
        code = f" [{self.code}]" if self.code else ""
        return f"{prefix}{self.message}{code}"


class ValidationFailed(HatcheryError):
    """The server refused the input (400, 413 or 422)."""


class Unauthorized(HatcheryError):
    """No API key, or one the server does not accept (401, 403)."""


class NotFound(HatcheryError):
    """404: the run, model or route does not exist (or belongs to another key)."""


class Conflict(HatcheryError):
    """409: e.g. ``run_not_finished`` or ``idempotency_key_in_use``."""


class RateLimited(HatcheryError):
    """429, after the client's retries ran out; ``retry_after`` says when to come back."""


class ServerError(HatcheryError):
    """5xx, after the client's retries ran out (503 ``overloaded`` or ``not_ready``, 500…)."""


class TransportError(HatcheryError):
    """No usable answer: the connection could not be made or broke, after every retry."""


class RequestTimeout(TransportError):
    """The server did not answer within the configured timeout, after every retry."""


class MonitorTimeout(HatcheryError, TimeoutError):
    """A ``monitor_*`` call reached its ``timeout`` before the run finished."""


_BY_STATUS: dict[int, type[HatcheryError]] = {
    400: ValidationFailed,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: ValidationFailed,
    422: ValidationFailed,
    429: RateLimited,
}


def error_class(status_code: int) -> type[HatcheryError]:
    if status_code >= 500:
        return ServerError
    return _BY_STATUS.get(status_code, HatcheryError)


def error_from_response(
    status_code: int, content: bytes, headers: Any, *, reason: str = ""
) -> HatcheryError:
    """The exception for an error answer (``headers``: any case-insensitive mapping)."""
    body = _json_or_none(content)
    detail = body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        message = str(detail.get("message") or reason or "request failed")
        code, param, type_ = detail.get("code"), detail.get("param"), detail.get("type")
    else:
        text = content.decode("utf-8", "replace").strip()[:200]
        message = text or reason or f"HTTP {status_code}"
        code = param = type_ = None
    cls = error_class(status_code)
    return cls(
        message,
        status_code=status_code,
        code=str(code) if code is not None else None,
        param=str(param) if param is not None else None,
        type=str(type_) if type_ is not None else None,
        retry_after=parse_retry_after(headers.get("retry-after")),
        body=body,
    )


def error_code(content: bytes) -> str | None:
    """The machine-readable ``error.code`` of an error body, if it has one."""
    body = _json_or_none(content)
    detail = body.get("error") if isinstance(body, dict) else None
    code = detail.get("code") if isinstance(detail, dict) else None
    return str(code) if code is not None else None


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date; None if absent or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def ws_close_error(code: int | None, reason: str = "") -> HatcheryError | None:
    """The error a WebSocket close code stands for, or None if the socket should reconnect.

    The convention closes with 4404 for an unknown run and 4401 without a valid key.
    """
    if code == 4404:
        return NotFound(reason or "run not found", status_code=404, code="run_not_found")
    if code == 4401:
        return Unauthorized(reason or "a valid API key is required", status_code=401)
    if code is not None and 4000 <= code < 5000:
        return HatcheryError(reason or f"WebSocket closed with code {code}", code=str(code))
    return None


def ws_handshake_error(status_code: int, content: bytes, headers: Any, url: str) -> HatcheryError:
    """The error for a refused WebSocket handshake.

    The server itself refuses keys and unknown runs *after* accepting (4401, 4404), so a 403
    at the handshake is how Starlette answers a WebSocket path it does not serve at all (a
    component this server does not run): reported as NotFound.
    """
    if status_code == 403:
        return NotFound(f"no WebSocket endpoint at {url}", status_code=403, code="not_found")
    return error_from_response(status_code, content, headers)


def _json_or_none(content: bytes) -> Any:
    try:
        return json.loads(content) if content else None
    except (ValueError, UnicodeDecodeError):
        return None
