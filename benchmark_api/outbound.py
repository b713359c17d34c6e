"""Outbound URLs: which hosts a serving benchmark may load, and where "this server" is.

A run that sends load to a URL could otherwise make the server flood any host, so the
`base_url` host must be in `settings.outbound.allow_hosts` (default: loopback only; `"*"`
allows any host). Hosts are compared as written, after normalising case and IP spelling;
names are not resolved.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from core.config import Settings
from core.errors import InvalidRequest

ANY_HOST = "*"
_UNSPECIFIED = {"0.0.0.0", "::", ""}


def root_url(scheme: str, host: str, port: int) -> str:
    if host in _UNSPECIFIED:  # a wildcard bind is reachable on loopback from inside
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def default_base_url(settings: Settings) -> str:
    """This server's OpenAI base URL, as its settings say it listens."""
    return root_url("http", settings.server.host, settings.server.port) + "/v1"


def check_url_allowed(url: str, settings: Settings) -> None:
    """InvalidRequest `url_not_allowed` (400) unless the URL's host is on the allow-list."""
    host = urlsplit(url).hostname or ""
    allowed = settings.outbound.allow_hosts
    if any(entry == ANY_HOST or _normal(entry) == _normal(host) for entry in allowed):
        return
    raise InvalidRequest(
        f"host {host!r} is not in outbound.allow_hosts ({', '.join(allowed) or 'empty'})",
        param="base_url",
        code="url_not_allowed",
    )


def _normal(host: str) -> str:
    host = host.strip().strip("[]").lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host
