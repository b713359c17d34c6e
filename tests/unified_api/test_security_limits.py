"""Keys on every route of the unified server, per-key rate limits (memory and Redis), 413.

Key handling itself (digests, headers, ownership, CORS preflights) is in
tests/core/test_security.py; these cover every route the unified server mounts, WebSockets
and SSE included, and the limits.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from core.api.metrics import iter_routes
from core.api.security import PUBLIC_PATHS
from tests.conftest import make_settings
from tests.support.sample_component import create_app as create_sample_app
from tests.support.server import LiveServer
from tests.unified_api.helpers import REDIS_HOST, REDIS_PORT, nano_settings, redis_available
from unified_api.app import create_app

LiveServerFactory = Callable[[FastAPI], LiveServer]


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "0" * 32, path)


def ws_close_code(url: str, **headers: str) -> int | None:
    with connect(url, additional_headers=headers) as ws:
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=10)
        return ws.close_code


def test_every_unified_route_but_liveness_needs_a_key(
    tmp_path: Path, models_dir: Path, live_server: LiveServerFactory
) -> None:
    key = "unified-key"
    settings = nano_settings(
        tmp_path, models_dir, **{"auth.enabled": True, "auth.api_keys": [key], "model.preload": []}
    )
    app = create_app(settings)
    server = live_server(app)
    routes = list(iter_routes(app))
    assert len(routes) > 20
    http_checked = ws_checked = 0
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        for route in routes:
            path = concrete(route.path)
            methods = getattr(route, "methods", None)
            if methods is None:  # a WebSocket route
                assert ws_close_code(f"{server.ws_url}{path}") == 4401, path
                ws_checked += 1
                continue
            for method in sorted(set(methods) - {"HEAD"}):
                response = anonymous.request(method, path)
                expected = 200 if path in PUBLIC_PATHS else 401  # /health, /ping
                assert response.status_code == expected, f"{method} {path}: {response.text}"
                http_checked += 1
        # The dashboard shell is public (it holds no data); everything it calls needs the key.
        assert anonymous.get("/ui/").status_code == 200
        query_key = anonymous.get(f"/api/runs?api_key={key}")
        assert query_key.status_code == 401  # a key in the query string is for streams only
    assert ws_checked >= 1 and http_checked > 20
    with httpx.Client(base_url=server.url, headers={"X-API-Key": key}, timeout=30) as client:
        assert client.get("/info").json()["features"]["auth"] is True
        assert client.get("/stats").status_code == 200
        assert client.get("/metrics").status_code == 200


def limited_settings(tmp_path: Path, per_minute: int, **overrides: Any) -> Any:
    return make_settings(
        f"sqlite:///{tmp_path / 'h.db'}",
        **{
            "rate_limiting.enabled": True,
            "rate_limiting.requests_per_minute": per_minute,
            **overrides,
        },
    )


def assert_rate_limited(response: httpx.Response) -> int:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limited")
    assert "3 requests per minute" in error["message"]
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert response.headers["X-Request-ID"]
    return retry_after


def test_rate_limits_are_per_key_with_retry_after(
    tmp_path: Path, live_server: LiveServerFactory
) -> None:
    key_a, key_b = "key-a", "key-b"
    settings = limited_settings(
        tmp_path, 3, **{"auth.enabled": True, "auth.api_keys": [key_a, key_b]}
    )
    server = live_server(create_sample_app(settings))

    def client(key: str) -> httpx.Client:
        return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"})

    with client(key_a) as a, client(key_b) as b:
        for _ in range(3):
            assert a.get("/api/sample/runs").status_code == 200
        assert_rate_limited(a.get("/api/sample/runs"))
        assert_rate_limited(a.post("/api/sample/run", json={"kind": "fail"}))
        assert a.get("/health").status_code == 200  # probes are never limited
        assert b.get("/api/sample/runs").status_code == 200  # B has its own budget
        code = ws_close_code(
            f"{server.ws_url}/api/sample/ws/{'0' * 32}", Authorization=f"Bearer {key_a}"
        )
        assert code == 4429
        metrics = b.get("/metrics").text
    refused = 'hatchery_http_requests_total{method="GET",route="/api/sample/runs",status="429"} 1.0'
    assert refused in metrics


def test_without_auth_the_client_address_is_limited(
    tmp_path: Path, live_server: LiveServerFactory
) -> None:
    server = live_server(create_sample_app(limited_settings(tmp_path, 3)))
    with httpx.Client(base_url=server.url) as client:
        for _ in range(3):
            assert client.get("/api/runs").status_code == 200
        assert_rate_limited(client.get("/ready"))


@pytest.mark.skipif(not redis_available(), reason=f"no Redis answers at {REDIS_HOST}:{REDIS_PORT}")
def test_replicas_share_counts_through_redis(
    tmp_path: Path, live_server: LiveServerFactory
) -> None:
    key = f"key-{uuid.uuid4().hex}"  # a fresh caller: counts left in Redis cannot interfere
    settings = limited_settings(
        tmp_path,
        3,
        **{
            "auth.enabled": True,
            "auth.api_keys": [key],
            "rate_limiting.storage": f"redis://{REDIS_HOST}:{REDIS_PORT}/0",
        },
    )
    first = live_server(create_sample_app(settings))
    second = live_server(create_sample_app(settings))
    headers = {"X-API-Key": key}
    with (
        httpx.Client(base_url=first.url, headers=headers) as one,
        httpx.Client(base_url=second.url, headers=headers) as two,
    ):
        assert one.get("/api/runs").status_code == 200
        assert two.get("/api/runs").status_code == 200
        assert one.get("/api/runs").status_code == 200
        assert_rate_limited(two.get("/api/runs"))  # the 4th request, counted across replicas
        assert_rate_limited(one.get("/api/runs"))


def test_a_broken_limiter_storage_lets_requests_through(
    tmp_path: Path, live_server: LiveServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    settings = limited_settings(
        tmp_path, 3, **{"rate_limiting.storage": f"redis://127.0.0.1:{dead_port}/0"}
    )
    server = live_server(create_sample_app(settings))
    with caplog.at_level(logging.WARNING, logger="core.api.ratelimit"):
        with httpx.Client(base_url=server.url) as client:
            assert [client.get("/api/runs").status_code for _ in range(5)] == [200] * 5
    warnings = [r for r in caplog.records if "rate limit storage" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not once per request


def send_unfinished_chunked_body(port: int, path: str, chunks: list[bytes]) -> tuple[int, Any]:
    """POST a chunked body without its final chunk; return the status and the JSON answer.

    The server can only answer before the body is complete if it counts while reading.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        )
        sock.sendall(head.encode())
        for chunk in chunks:
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        received = b""
        while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            received += data
    head_text, _, body = received.partition(b"\r\n\r\n")
    status = int(head_text.split(b" ", 2)[1])
    return status, json.loads(body[body.index(b"{") :])


def test_body_limit_is_enforced_while_the_body_streams(
    tmp_path: Path, models_dir: Path, live_server: LiveServerFactory
) -> None:
    settings = nano_settings(
        tmp_path, models_dir, **{"server.max_body_bytes": 1024, "model.preload": []}
    )
    app = create_app(settings)
    server = live_server(app)
    posts = [r.path for r in iter_routes(app) if "POST" in (getattr(r, "methods", None) or ())]
    targets = [p for p in ("/api/test/run", "/v1/completions", "/api/runs") if p in posts]
    targets.append("/api/generator/run" if "/api/generator/run" in posts else posts[0])
    for path in targets:
        status, body = send_unfinished_chunked_body(server.port, path, [b" " * 800] * 2)
        assert status == 413, (path, body)
        assert body["error"]["code"] == "payload_too_large"
        assert "1024 bytes" in body["error"]["message"]
