"""The unified server checks outbound URLs at submission, as each component alone does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import engine_settings
from tests.support.server import LiveServer
from unified_api.app import create_app

LiveServerFactory = Callable[[FastAPI], LiveServer]
OFF_THE_LIST = "http://example.com/v1"
SERVING: dict[str, Any] = {
    "kind": "serving",
    "model": "bdh-nano",
    "concurrency": [1],
    "num_requests": 1,
    "max_tokens": 2,
}


@pytest.fixture
def server(sqlite_url: str, models_dir: Path, live_server: LiveServerFactory) -> LiveServer:
    return live_server(create_app(engine_settings(sqlite_url, models_dir)))


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/test/run", {"kind": "endpoint", "base_url": OFF_THE_LIST}),
        ("/api/benchmark/run", SERVING | {"base_url": OFF_THE_LIST}),
    ],
)
def test_a_base_url_off_the_allow_list_is_400_at_submission(
    server: LiveServer, path: str, body: dict[str, Any]
) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.post(path, json=body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("url_not_allowed", "base_url")
        assert "example.com" in error["message"]
        assert client.get("/api/runs").json()["count"] == 0


def test_the_default_base_url_is_the_address_the_request_came_in_on(server: LiveServer) -> None:
    # Not settings.server (127.0.0.1:8000 here): the port this server really listens on.
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.post("/api/test/run", json={"kind": "endpoint"})
        assert response.status_code == 202, response.text
        run = response.json()
        client.post(f"/api/test/cancel/{run['id']}")
    assert run["params"]["base_url"] == f"{server.url}/v1"
