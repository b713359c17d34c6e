"""Per-caller rate limiting with the ``limits`` library: 429 with ``Retry-After``.

The caller is the API key (its digest-prefix id) when auth is on, else the client address, so
one noisy key cannot starve the others. Requests are counted in a moving one-minute window,
``rate_limiting.requests_per_minute`` per caller. Storage is per process by default
(``memory://``); a Redis URL (``redis://host:6379``) shares the counts between replicas.

The limiter is asynchronous end to end (``limits.aio``), so a Redis round-trip never blocks the
event loop. When the storage fails (Redis down) requests are let through and a warning is
logged: a broken limiter must not take the whole API down with it.

WebSocket handshakes count as requests; a refused one is accepted and closed with code 4429
(a close before accepting would reach the client as a bare 403).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from starlette.types import ASGIApp, Receive, Scope, Send

from core.api.security import PUBLIC_PATHS, Principal, refuse
from core.config import RateLimitingSettings
from core.errors import RateLimited

logger = logging.getLogger(__name__)

_KEY_PREFIX = "hatchery"
_WARN_EVERY_S = 60.0  # at most one "storage failed" warning a minute


def async_storage_uri(storage: str) -> str:
    """``redis://…`` -> ``async+redis://…``: the settings name the store, we pick the driver."""
    return storage if storage.startswith("async+") else f"async+{storage}"


class RateLimiter:
    """A limiter of ``per_minute`` events per identity: the window item, and the storage
    opened on first use."""

    def __init__(self, *, per_minute: int, storage: str, key_prefix: str = _KEY_PREFIX) -> None:
        self.item: RateLimitItem = RateLimitItemPerMinute(per_minute)
        self.storage_uri = async_storage_uri(storage)
        self.key_prefix = key_prefix
        self._storage: Any = None
        self._strategy: MovingWindowRateLimiter | None = None
        self._last_warning = -math.inf

    def _limiter(self) -> MovingWindowRateLimiter:
        if self._strategy is None:
            options: dict[str, Any] = {"key_prefix": self.key_prefix}
            if "redis" in self.storage_uri:
                options["implementation"] = "redispy"  # redis-py is installed; coredis is not
            self._storage = storage_from_string(self.storage_uri, **options)
            self._strategy = MovingWindowRateLimiter(self._storage)
        return self._strategy

    @classmethod
    def from_settings(cls, settings: RateLimitingSettings) -> RateLimiter:
        return cls(per_minute=settings.requests_per_minute, storage=settings.storage)

    async def hit(self, identity: str) -> float | None:
        """Count one request; None when allowed, else the seconds until it would be."""
        return await self._check(identity, count=True)

    async def exhausted(self, identity: str) -> float | None:
        """Like ``hit`` but counts nothing: None while the identity has budget left."""
        return await self._check(identity, count=False)

    async def _check(self, identity: str, *, count: bool) -> float | None:
        try:
            limiter = self._limiter()
            test = limiter.hit if count else limiter.test
            if await test(self.item, identity):
                return None
            stats = await limiter.get_window_stats(self.item, identity)
        except Exception:
            self._warn_storage_failed()
            return None
        return max(1.0, stats.reset_time - time.time())

    def _warn_storage_failed(self) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY_S:
            self._last_warning = now
            logger.warning(
                "rate limit storage %s failed; letting requests through",
                self.storage_uri,
                exc_info=True,
            )

    async def close(self) -> None:
        """Release the storage's connections and timers (call in the app's shutdown)."""
        storage, self._storage, self._strategy = self._storage, None, None
        if storage is None:
            return
        timer = getattr(storage, "timer", None)  # the memory storage's expiry task
        if timer is not None:
            timer.cancel()
        client = getattr(getattr(storage, "bridge", None), "storage", None)
        close = getattr(client, "aclose", None)
        if callable(close):
            try:
                await close()
            except Exception:
                logger.warning("closing the rate limit storage failed", exc_info=True)


def caller_identity(scope: Scope) -> str:
    """The API key id when authenticated, else the client address."""
    principal = scope.get("state", {}).get("principal")
    if isinstance(principal, Principal) and principal.key_id is not None:
        return f"key:{principal.key_id}"
    return _client_address(scope)


class RateLimitMiddleware:
    """Refuses callers over their budget; sits inside authentication (it needs the key)."""

    def __init__(self, app: ASGIApp, *, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        retry_after = await self.limiter.hit(caller_identity(scope))
        if retry_after is None:
            await self.app(scope, receive, send)
            return
        error = RateLimited(
            f"rate limit of {self.limiter.item.amount} requests per minute exceeded",
            retry_after=retry_after,
        )
        await refuse(error, scope, receive, send)


class AuthFailureLimiter:
    """Failed authentications per client address (``auth.max_failures_per_minute``).

    Checked before the key is: an address over its budget gets 429 for every request, a
    right key included (were right keys let through, the answer would still tell a good
    guess from a bad one). Counts live in ``rate_limiting.storage``, so replicas on Redis
    share them.
    """

    def __init__(self, *, per_minute: int, storage: str) -> None:
        self.per_minute = per_minute
        self.limiter = RateLimiter(
            per_minute=per_minute, storage=storage, key_prefix=f"{_KEY_PREFIX}-auth-failures"
        )

    async def refusal(self, scope: Scope) -> RateLimited | None:
        retry_after = await self.limiter.exhausted(_client_address(scope))
        if retry_after is None:
            return None
        return RateLimited(
            f"more than {self.per_minute} failed authentications a minute from this address",
            retry_after=retry_after,
            code="too_many_failed_authentications",
        )

    async def failed(self, scope: Scope) -> None:
        await self.limiter.hit(_client_address(scope))

    async def close(self) -> None:
        await self.limiter.close()


def _client_address(scope: Scope) -> str:
    client = scope.get("client")
    return f"ip:{client[0]}" if client else "ip:unknown"
