"""API-key authentication and the caller's identity (``Principal``).

Keys come from ``auth.api_keys`` / ``auth.admin_keys``, plain or as ``sha256:<hex>``; only
their SHA-256 digests are kept, and a presented key is compared against every digest with
``hmac.compare_digest`` (no early exit), so timing says nothing about which key nearly matched.
A key is presented as ``Authorization: Bearer <key>`` or ``X-API-Key``; WebSockets and SSE
streams (which browsers cannot give headers) may also use ``?api_key=``.

Authentication is a pure ASGI middleware, so it covers every route — including those that
components add later — except ``/health``. Routes read the result through ``PrincipalDep``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Protocol
from urllib.parse import parse_qsl, urlencode

from fastapi import Depends
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from core.config import AuthSettings
from core.errors import PlatformError, Unauthorized

PUBLIC_PATHS = frozenset({"/health", "/ping"})  # liveness probes carry no key
WS_CLOSE_UNAUTHORIZED = 4401
WS_CLOSE_RATE_LIMITED = 4429


@dataclass(frozen=True)
class Principal:
    """Who is calling. ``key_id`` is a digest prefix: safe to store and to log."""

    key_id: str | None
    is_admin: bool

    @property
    def owner(self) -> str | None:
        """Recorded on the runs this caller creates."""
        return self.key_id

    @property
    def visible_to(self) -> str | None:
        """Owner filter for what this caller may see; None means everything."""
        return None if self.is_admin else self.key_id


# With auth off there is one anonymous caller who sees everything.
ANONYMOUS = Principal(key_id=None, is_admin=True)


def _digest(key: str) -> bytes:
    if key.startswith("sha256:"):
        return bytes.fromhex(key.removeprefix("sha256:"))
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """The configured keys, as digests."""

    def __init__(self, *, api_keys: Iterable[str], admin_keys: Iterable[str] = ()) -> None:
        entries = {_digest(key): False for key in api_keys}
        entries |= {_digest(key): True for key in admin_keys}
        self._entries = list(entries.items())

    @classmethod
    def from_settings(cls, auth: AuthSettings) -> KeyRing | None:
        """None when auth is disabled."""
        if not auth.enabled:
            return None
        return cls(api_keys=auth.api_keys, admin_keys=auth.admin_keys)

    def authenticate(self, presented: str) -> Principal | None:
        digest = hashlib.sha256(presented.encode()).digest()
        found: tuple[bytes, bool] | None = None
        for stored, is_admin in self._entries:
            if hmac.compare_digest(digest, stored) and found is None:
                found = (stored, is_admin)
        if found is None:
            return None
        return Principal(key_id=found[0].hex()[:16], is_admin=found[1])


def take_query_key(scope: Scope) -> str | None:
    """Remove ``api_key`` from the scope's query string and return its value.

    The server logs the request line (uvicorn's access line, its "WebSocket … [accepted]"
    line) from this same scope once the app has answered: a key left in the query string
    would be written to the log in plain text.
    """
    query = scope.get("query_string", b"")
    if b"api_key" not in query:
        return None
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    keys = [value for name, value in pairs if name == "api_key"]
    if not keys:
        return None
    kept = [(name, value) for name, value in pairs if name != "api_key"]
    scope["query_string"] = urlencode(kept).encode("latin-1")
    return keys[0]


def presented_key(scope: Scope, query_key: str | None = None) -> str | None:
    """The API key a request or WebSocket handshake carries, if any.

    ``query_key`` (from ``take_query_key``) counts only for WebSockets and SSE streams.
    """
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if headers.get("x-api-key"):
        return headers["x-api-key"]
    if scope["type"] == "websocket" or "/events/" in scope["path"]:
        return query_key or None
    return None


class FailureLimit(Protocol):
    """Counts failed authentications per client (``ratelimit.AuthFailureLimiter``)."""

    async def refusal(self, scope: Scope) -> PlatformError | None: ...

    async def failed(self, scope: Scope) -> None: ...


class AuthMiddleware:
    """Authenticates every request but ``/health``; stores the Principal in the scope state.

    Strips ``api_key`` from every query string first, auth on or off (see ``take_query_key``).
    With ``failures`` an address that failed too often is refused before its key is looked at.
    """

    def __init__(
        self, app: ASGIApp, *, keyring: KeyRing | None, failures: FailureLimit | None = None
    ) -> None:
        self.app = app
        self.keyring = keyring
        self.failures = failures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        query_key = take_query_key(scope)
        principal: Principal | None = ANONYMOUS
        if self.keyring is not None and scope["path"] not in PUBLIC_PATHS:
            if self.failures is not None and (refusal := await self.failures.refusal(scope)):
                await refuse(refusal, scope, receive, send)
                return
            key = presented_key(scope, query_key)
            principal = self.keyring.authenticate(key) if key else None
            if principal is None and self.failures is not None:
                await self.failures.failed(scope)
        if principal is None:
            await refuse(Unauthorized(), scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


_WS_CLOSE_CODES = {401: WS_CLOSE_UNAUTHORIZED, 429: WS_CLOSE_RATE_LIMITED}


async def refuse(error: PlatformError, scope: Scope, receive: Receive, send: Send) -> None:
    """The error as an HTTP answer, or as a WebSocket close code (44xx) with a reason."""
    if scope["type"] == "websocket":
        reason = error.code
        if "Retry-After" in error.headers:
            reason = f"{reason}; retry after {error.headers['Retry-After']} s"
        code = _WS_CLOSE_CODES.get(error.status_code, 4000 + error.status_code)
        await close_websocket(scope, receive, send, code=code, reason=reason)
        return
    response = JSONResponse(error.to_body(), status_code=error.status_code, headers=error.headers)
    await response(scope, receive, send)


async def close_websocket(
    scope: Scope, receive: Receive, send: Send, *, code: int, reason: str
) -> None:
    # Accept first: a close before accepting reaches the client as a bare HTTP 403, and the
    # code would be lost.
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": code, "reason": reason})


def get_principal(connection: HTTPConnection) -> Principal:
    principal = connection.scope.get("state", {}).get("principal")
    if isinstance(principal, Principal):
        return principal
    # No middleware ran (a router mounted elsewhere): fail closed unless auth is off.
    settings = getattr(connection.app.state, "settings", None)
    if settings is not None and not settings.auth.enabled:
        return ANONYMOUS
    raise Unauthorized()


PrincipalDep = Annotated[Principal, Depends(get_principal)]
