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
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import Depends
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from core.config import AuthSettings
from core.errors import Unauthorized

PUBLIC_PATHS = frozenset({"/health", "/ping"})  # liveness probes carry no key
WS_CLOSE_UNAUTHORIZED = 4401


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


def presented_key(scope: Scope) -> str | None:
    """The API key a request or WebSocket handshake carries, if any."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if headers.get("x-api-key"):
        return headers["x-api-key"]
    if scope["type"] == "websocket" or "/events/" in scope["path"]:
        values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("api_key")
        if values:
            return values[0]
    return None


class AuthMiddleware:
    """Authenticates every request but ``/health``; stores the Principal in the scope state."""

    def __init__(self, app: ASGIApp, *, keyring: KeyRing | None) -> None:
        self.app = app
        self.keyring = keyring

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        principal: Principal | None = ANONYMOUS
        if self.keyring is not None and scope["path"] not in PUBLIC_PATHS:
            key = presented_key(scope)
            principal = self.keyring.authenticate(key) if key else None
        if principal is None:
            await _refuse(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":
        # Accept first: a close before accepting reaches the client as a bare HTTP 403,
        # and the 4401 code would be lost.
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send(
            {"type": "websocket.close", "code": WS_CLOSE_UNAUTHORIZED, "reason": "unauthorized"}
        )
        return
    error = Unauthorized()
    response = JSONResponse(error.to_body(), status_code=error.status_code, headers=error.headers)
    await response(scope, receive, send)


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
