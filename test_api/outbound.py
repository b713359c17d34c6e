"""Outbound URLs: which hosts a run may call, and where "this server" is.

A run that calls a URL (the endpoint suite) could otherwise be used to make the server reach
arbitrary hosts, so every ``base_url`` must name a host in ``settings.outbound.allow_hosts``
(default: loopback only; ``"*"`` allows any host). Hosts are compared as written, after
normalising case and IP spelling — names are not resolved, and redirects are never followed
(a redirect could lead off the list).

The check runs twice: at submission, so ``POST /api/test/run`` answers 400 ``url_not_allowed``
instead of accepting a run that can only fail, and again in the job, against the settings of
the worker that runs it. The submission check needs the server's settings and address while
pydantic validates the body; ``SubmissionContextMiddleware`` provides them through a context
variable, because the run router offers no hook that sees the request before the run is created.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from core.config import Settings
from core.errors import InvalidRequest

ANY_HOST = "*"
_UNSPECIFIED = {"0.0.0.0", "::", ""}


class UrlNotAllowed(InvalidRequest):
    default_code = "url_not_allowed"

    def __init__(self, message: str, **kwargs: object) -> None:
        kwargs.setdefault("param", "base_url")
        super().__init__(message, **kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Submission:
    """The server a request came in through: its settings and its own root URL."""

    settings: Settings
    server_url: str | None


_submission: ContextVar[Submission | None] = ContextVar("hatchery_test_submission", default=None)


def current_submission() -> Submission | None:
    """The server the request being validated came in through; None outside requests."""
    return _submission.get()


@contextmanager
def submitting(submission: Submission) -> Iterator[None]:
    token = _submission.set(submission)
    try:
        yield
    finally:
        _submission.reset(token)


class SubmissionContextMiddleware:
    """Pure ASGI: makes the settings and the server's address visible to request validation."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with submitting(Submission(self.settings, server_url_from_scope(scope))):
            await self.app(scope, receive, send)


def server_url_from_scope(scope: Scope) -> str | None:
    """This server's root URL as the socket the request arrived on sees it (not the Host
    header, which the client chooses)."""
    server = scope.get("server")
    if not server or server[1] is None:
        return None
    scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
    return root_url(scheme, str(server[0]), int(server[1]))


def server_url_from_settings(settings: Settings) -> str:
    return root_url("http", settings.server.host, settings.server.port)


def root_url(scheme: str, host: str, port: int) -> str:
    # A wildcard bind address is reachable on loopback from inside the server.
    if host in _UNSPECIFIED:
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def check_url(url: str, allow_hosts: Sequence[str]) -> str:
    """``url`` without a trailing slash if it is http(s) to an allowed host; else UrlNotAllowed."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        _ = parts.port  # raises ValueError for a bad port
    except ValueError as exc:
        raise UrlNotAllowed(f"base_url is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise UrlNotAllowed("base_url must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment:
        raise UrlNotAllowed("base_url must not have a query or fragment")
    if not host_allowed(host, allow_hosts):
        raise UrlNotAllowed(
            f"host {host!r} is not in settings.outbound.allow_hosts "
            f"({', '.join(allow_hosts) or 'empty'})"
        )
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def host_allowed(host: str, allow_hosts: Sequence[str]) -> bool:
    wanted = _normal_host(host)
    return any(entry == ANY_HOST or _normal_host(entry) == wanted for entry in allow_hosts)


def _normal_host(host: str) -> str:
    host = host.strip().strip("[]").lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host
