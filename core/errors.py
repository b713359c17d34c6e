"""One exception tree for the whole platform; one handler turns it into one error body.

::

    PlatformError                  (500, server_error, code "internal_error")
    ├── InvalidRequest             (400 or 422, invalid_request_error, "invalid_request")
    ├── Unauthorized               (401, authentication_error, "invalid_api_key")
    ├── NotFound                   (404, not_found_error, e.g. "run_not_found", "model_not_found")
    ├── Conflict                   (409, conflict_error, e.g. "run_not_finished",
    │                                                     "idempotency_key_in_use")
    ├── PayloadTooLarge            (413, invalid_request_error, "payload_too_large")
    ├── RateLimited                (429, rate_limit_error, "rate_limited"; Retry-After)
    ├── Overloaded                 (503, overloaded_error, "overloaded"; Retry-After)
    ├── NotReady                   (503, server_error, "not_ready")
    ├── FeatureUnavailable         (501, server_error, "not_available"; also NotImplementedError)
    ├── ConfigError                (500, server_error, "invalid_config"; raised at start-up)
    └── RunCancelled               (raised inside jobs by ``RunContext.check_cancelled``;
                                    the executor records it, it never reaches HTTP)

Every HTTP error body, whatever raised it, has the OpenAI-compatible shape::

    {"error": {"message": str, "type": str, "param": str | null, "code": str}}

Routes raise these; they never return error values.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from pydantic import BaseModel


class PlatformError(Exception):
    """Base of every error the platform raises on purpose."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status_code: int | None = None,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.param = param
        self.type = type or self.error_type
        self.headers = dict(headers or {})
        # Instance attribute shadows the class default only when given.
        if status_code is not None:
            self.status_code = status_code  # type: ignore[misc]

    def to_body(self) -> dict[str, Any]:
        """The one error body every client sees."""
        return error_body(message=self.message, type=self.type, param=self.param, code=self.code)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r})"


def error_body(*, message: str, type: str, param: str | None, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str


class ErrorResponse(BaseModel):
    """The error body, for OpenAPI ``responses=`` declarations."""

    error: ErrorDetail


class InvalidRequest(PlatformError):
    status_code = 400
    error_type = "invalid_request_error"
    default_code = "invalid_request"


class Unauthorized(PlatformError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"

    def __init__(self, message: str = "a valid API key is required", **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(message, **kwargs)


class NotFound(PlatformError):
    status_code = 404
    error_type = "not_found_error"
    default_code = "not_found"


class Conflict(PlatformError):
    status_code = 409
    error_type = "conflict_error"
    default_code = "conflict"


class PayloadTooLarge(PlatformError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "payload_too_large"


class _RetryLater(PlatformError):
    """An error the client should retry after ``retry_after`` seconds (sent as Retry-After)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after
        if retry_after is not None:
            # Retry-After takes whole seconds; never tell a client "0" when we meant "soon".
            self.headers.setdefault("Retry-After", str(max(1, math.ceil(retry_after))))


class RateLimited(_RetryLater):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limited"


class Overloaded(_RetryLater):
    status_code = 503
    error_type = "overloaded_error"
    default_code = "overloaded"


class NotReady(PlatformError):
    status_code = 503
    default_code = "not_ready"


class StoreUnavailable(_RetryLater):
    """The store did not answer (connection refused, dropped or timed out): retry soon."""

    status_code = 503
    error_type = "overloaded_error"
    default_code = "store_unavailable"


class FeatureUnavailable(PlatformError, NotImplementedError):
    status_code = 501
    default_code = "not_available"


class ConfigError(PlatformError):
    default_code = "invalid_config"


class RunCancelled(PlatformError):
    """Raised inside a job when its run was cancelled (or its worker is shutting down)."""

    status_code = 409
    error_type = "conflict_error"
    default_code = "cancelled"

    def __init__(self, message: str = "run was cancelled", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
