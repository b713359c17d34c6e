"""Outbound URLs: which hosts a run may call, and where "this server" is.

A run that calls a URL (the Test component's endpoint suite, the Benchmark component's serving
load) could otherwise make the server reach, or flood, arbitrary hosts, so every ``base_url``
must name a host in ``settings.outbound.allow_hosts`` (default: loopback only; ``"*"`` allows
any host). Hosts are compared as written, after normalising case and IP spelling: names are
not resolved. Callers never follow redirects, which could lead off the list.

Where a run's OpenAI endpoint is by default (``openai_base_url``): this server's ``/v1`` when
it serves one, else the generator named by ``services.generator_url``; with neither the run is
refused at submission (422 ``no_openai_endpoint``). The configured peers' hosts are allowed
without listing them again, and only they (and this server) get ``services.api_key``.

The check runs twice: at submission, so ``POST /api/{component}/run`` answers 400
``url_not_allowed`` instead of accepting a run that can only fail (the request models read the
server's settings and address from ``core.api.submission``), and again in the job, against the
settings of the worker that runs it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from starlette.types import Scope

from core.config import Settings
from core.errors import InvalidRequest, PlatformError

ANY_HOST = "*"
_UNSPECIFIED = {"0.0.0.0", "::", ""}


class UrlNotAllowed(InvalidRequest):
    """400 ``url_not_allowed`` on ``base_url`` (unless another param is named)."""

    default_code = "url_not_allowed"

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("param", "base_url")
        super().__init__(message, **kwargs)


class NoOpenAIEndpoint(PlatformError):
    """422: the run needs an OpenAI endpoint and this server neither serves nor knows one."""

    status_code = 422
    error_type = "invalid_request_error"
    default_code = "no_openai_endpoint"


def openai_base_url(settings: Settings, server_url: str | None, *, serves_openai: bool) -> str:
    """The ``/v1`` a run targets when it names none (see the module docstring)."""
    if serves_openai and server_url is not None:
        return server_url + "/v1"
    if settings.services.generator_url is not None:
        return settings.services.generator_url + "/v1"
    raise NoOpenAIEndpoint(
        "this server does not serve /v1 and knows no generator: give base_url, or start it "
        "with --generator-url (services.generator_url)",
        param="base_url",
    )


def allowed_hosts(settings: Settings) -> list[str]:
    """``outbound.allow_hosts`` plus the hosts of the configured peers."""
    peers = (urlsplit(url).hostname for url in settings.services.peers().values())
    return [*settings.outbound.allow_hosts, *(host for host in peers if host)]


def peer_headers(settings: Settings, url: str) -> dict[str, str]:
    """``services.api_key`` as a Bearer header when ``url`` is a peer or this server, else {}.

    Never to other hosts: the key would leak to whoever runs them.
    """
    roots = [
        *settings.services.peers().values(),
        root_url("http", settings.server.host, settings.server.port),
    ]
    if any(url == root or url.startswith(root + "/") for root in roots):
        return settings.services.auth_headers()
    return {}


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


def server_url_from_scope(scope: Scope) -> str | None:
    """This server's root URL as the socket the request arrived on sees it.

    Not the Host header: the client chooses that, and it must not pick where the server sends
    its requests.
    """
    server = scope.get("server")
    if not server or server[1] is None:
        return None
    scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
    return root_url(scheme, str(server[0]), int(server[1]))


def default_base_url(settings: Settings) -> str:
    """This server's OpenAI base URL (``/v1``), as its settings say it listens."""
    return root_url("http", settings.server.host, settings.server.port) + "/v1"


def root_url(scheme: str, host: str, port: int) -> str:
    # A wildcard bind address is reachable on loopback from inside the server.
    if host in _UNSPECIFIED:
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"
