"""Start-up checks of where and how a server runs: exposure beyond loopback, Ray's store.

Kept apart from the settings tree (`core.config`), which only parses and validates values:
these checks look at combinations of settings and at the machine (whether Ray imports).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

from core.errors import ConfigError

if TYPE_CHECKING:
    from core.config import Settings

_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def check_exposure(settings: Settings) -> None:
    """Refuse to serve beyond loopback with auth off, unless ``server.allow_insecure``.

    Checked when a server starts, not when settings load: clients and tools that only read
    the settings may run with any ``server.host``.
    """
    server = settings.server
    if server.host.strip("[]") in _LOOPBACK_HOSTS or settings.auth.enabled:
        return
    if server.allow_insecure:
        return
    raise ConfigError(
        f"server.host {server.host!r} is reachable beyond this machine but auth.enabled is "
        "false: turn auth on (auth.api_keys), bind 127.0.0.1, or set "
        "server.allow_insecure: true"
    )


def check_ray_setup(store_url: str, ray_address: str | None) -> None:
    """Ray must be importable, and its workers must be able to reach the store.

    SQLite is a file: only processes on this machine can open it. So Ray with SQLite is
    allowed where every Ray worker runs on this machine: a Ray instance this process starts
    (``ray_address: null``) or a cluster addressed on loopback. Anything else needs a store
    server (PostgreSQL).
    """
    try:
        importlib.import_module("ray")
    except ImportError as exc:
        raise ValueError(
            f"executor.kind is 'ray' but Ray cannot be imported ({exc}); "
            "install it (pip install 'hatchery[ray]') or use executor.kind: local"
        ) from None
    url = make_url(store_url)
    if url.get_backend_name() != "sqlite":
        return
    database = url.database or ""
    if database in ("", ":memory:") or url.query.get("mode") == "memory":
        raise ValueError("executor.kind 'ray' needs a store its workers can open, not in-memory")
    address = ray_address
    if address is not None and _address_host(address) not in _LOOPBACK_HOSTS:
        raise ValueError(
            f"store.url is SQLite, which Ray workers on other machines cannot reach "
            f"(executor.ray_address {address!r}); use PostgreSQL, or a local Ray "
            "(ray_address null or 127.0.0.1:PORT)"
        )


def _address_host(address: str) -> str:
    """'ray://h:10001' or 'h:6379' -> 'h'; 'auto' (some cluster, maybe many machines) stays."""
    rest = address.split("://", 1)[-1]
    host, _, _ = rest.rpartition(":") if ":" in rest else (rest, "", "")
    return host.strip("[]") or rest
