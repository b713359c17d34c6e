"""Helpers for the unified-server tests: settings on the test models, readiness waits."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx

from core.config import Settings
from tests.conftest import engine_settings
from tests.support.poll import poll_until
from unified_api.components import installed

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def nano_settings(tmp_path: Path, models_dir: Path, **overrides: Any) -> Settings:
    """A real engine on bdh-nano (preloaded) and a fresh SQLite store."""
    base: dict[str, Any] = {"executor.grace_s": 2}
    return engine_settings(
        f"sqlite:///{tmp_path / 'hatchery.db'}", models_dir, **(base | overrides)
    )


def installed_components() -> list[str]:
    return [entry.name for entry in installed()]


def wait_ready(client: httpx.Client, timeout: float = 60.0) -> None:
    """Poll /ready until 200 (the preload runs in the background after start-up)."""
    poll_until(
        lambda: client.get("/ready"),
        lambda response: response.status_code == 200,
        timeout=timeout,
        interval=0.05,
        what="/ready",
    )


def redis_available() -> bool:
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False
