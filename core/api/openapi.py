"""The OpenAPI document says what the API does: how to authenticate, and every error status
a route can answer with, not only the ones its own code raises.

Middleware answers for every route (401 without a key, 429 over a limit, 413 for a body
over ``server.max_body_bytes``, 503 while the store is unreachable), and every route that
takes input can refuse it (400 from a check in the route, 422 from validation); FastAPI only
sees the route functions, so these are added to the generated document here.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from core.api.security import PUBLIC_PATHS
from core.config import Settings
from core.errors import ErrorResponse

SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY"},
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    # Streams only (browsers cannot give EventSource or WebSocket headers).
    "apiKeyQuery": {"type": "apiKey", "in": "query", "name": "api_key"},
}
_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer", "minimum": 1}}
}
_DESCRIPTIONS = {
    "400": "Invalid request",
    "401": "Missing or invalid API key",
    "413": "Request body too large",
    "422": "Validation error",
    "429": "Too many requests (or failed authentications); see Retry-After",
    "503": "Not ready: the store is unreachable or the engine is overloaded; see Retry-After",
}


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Replace ``app.openapi`` with a generator that completes FastAPI's document."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title, version=app.version, routes=app.routes, tags=app.openapi_tags
            )
            complete_document(document, settings)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def complete_document(document: dict[str, Any], settings: Settings) -> None:
    components = document.setdefault("components", {})
    components["securitySchemes"] = SECURITY_SCHEMES
    schemas = components.setdefault("schemas", {})
    if "ErrorResponse" not in schemas:
        error_schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(error_schema.pop("$defs", {}))
        schemas["ErrorResponse"] = error_schema
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            if path in PUBLIC_PATHS:
                operation["security"] = []  # liveness needs no key
                continue
            if settings.auth.enabled:
                operation["security"] = _security(path)
            for status in _statuses(operation, settings):
                _document(operation, status)


def _security(path: str) -> list[dict[str, list[str]]]:
    schemes = ["bearer", "apiKeyHeader"] + (["apiKeyQuery"] if "/events/" in path else [])
    return [{name: []} for name in schemes]


def _statuses(operation: dict[str, Any], settings: Settings) -> list[str]:
    statuses = ["503"]
    if settings.auth.enabled:
        statuses += ["401", "429"]
    if settings.rate_limiting.enabled:
        statuses.append("429")
    if operation.get("parameters") or operation.get("requestBody"):
        statuses += ["400", "422"]
    if operation.get("requestBody"):
        statuses.append("413")
    return statuses


def _document(operation: dict[str, Any], status: str) -> None:
    responses = operation.setdefault("responses", {})
    if status in responses:
        return
    response: dict[str, Any] = {
        "description": _DESCRIPTIONS[status],
        "content": {"application/json": {"schema": _ERROR_REF}},
    }
    if status in ("429", "503"):
        response["headers"] = _RETRY_AFTER
    responses[status] = response
