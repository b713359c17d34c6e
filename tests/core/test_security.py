"""API keys and run ownership against a real server with auth on."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from core.api.security import KeyRing
from tests.conftest import make_settings
from tests.support.poll import poll_until
from tests.support.sample_component import create_app
from tests.support.server import LiveServer, serve

KEY_A, KEY_B, ADMIN = "key-a-secret", "key-b-secret", "admin-secret"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    url = f"sqlite:///{tmp_path_factory.mktemp('auth') / 'hatchery.db'}"
    digest_b = "sha256:" + hashlib.sha256(KEY_B.encode()).hexdigest()
    settings = make_settings(
        url,
        **{"auth.enabled": True, "auth.api_keys": [KEY_A, digest_b], "auth.admin_keys": [ADMIN]},
    )
    with serve(create_app(settings)) as live:
        yield live


def client_for(server: LiveServer, key: str | None, header: str = "bearer") -> httpx.Client:
    headers = {}
    if key is not None:
        headers = {"Authorization": f"Bearer {key}"} if header == "bearer" else {"X-API-Key": key}
    return httpx.Client(base_url=server.url, headers=headers, timeout=10)


@pytest.fixture(scope="module")
def owned_run(server: LiveServer) -> str:
    with client_for(server, KEY_A) as client:
        run_id: str = client.post("/api/sample/run", json={"kind": "chatty", "events": 2}).json()[
            "id"
        ]
        poll_until(
            lambda: client.get(f"/api/sample/status/{run_id}").json(),
            lambda run: run["status"] == "succeeded",
            timeout=10,
            what="the owned run to succeed",
        )
    return run_id


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    return error


def test_every_route_but_health_needs_a_key(server: LiveServer) -> None:
    with client_for(server, None) as anonymous:
        assert anonymous.get("/health").status_code == 200
        for path in ("/ready", "/api/sample/runs", "/api/runs", "/openapi.json", "/nowhere"):
            response = anonymous.get(path)
            assert_error(response, 401, "invalid_api_key")
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert response.json()["error"]["type"] == "authentication_error"
        assert_error(
            anonymous.post("/api/sample/run", json={"kind": "fail"}), 401, "invalid_api_key"
        )
    with client_for(server, "wrong-key") as wrong:
        assert_error(wrong.get("/api/sample/runs"), 401, "invalid_api_key")
    for key, header in ((KEY_A, "bearer"), (KEY_B, "x-api-key"), (ADMIN, "bearer")):
        with client_for(server, key, header) as client:
            assert client.get("/ready").status_code == 200


def test_runs_are_private_to_their_key(server: LiveServer, owned_run: str) -> None:
    with client_for(server, KEY_B, "x-api-key") as other:
        for response in (
            other.get(f"/api/sample/status/{owned_run}"),
            other.get(f"/api/sample/results/{owned_run}"),
            other.post(f"/api/sample/cancel/{owned_run}"),
            other.get(f"/api/sample/events/{owned_run}"),
        ):
            assert_error(response, 404, "run_not_found")
        listed = {r["id"] for r in other.get("/api/sample/runs").json()["data"]}
        assert owned_run not in listed
        assert owned_run not in {r["id"] for r in other.get("/api/runs").json()["data"]}
    with client_for(server, KEY_A) as owner:
        assert owner.get(f"/api/sample/results/{owned_run}").status_code == 200
        assert owned_run in {r["id"] for r in owner.get("/api/sample/runs").json()["data"]}
    with client_for(server, ADMIN) as admin:
        assert admin.get(f"/api/sample/status/{owned_run}").status_code == 200
        assert owned_run in {r["id"] for r in admin.get("/api/runs").json()["data"]}


def test_websocket_and_sse_auth(server: LiveServer, owned_run: str) -> None:
    url = f"{server.ws_url}/api/sample/ws/{owned_run}"
    for target, headers in ((url, {}), (f"{url}?api_key=wrong", {})):
        with connect(target, additional_headers=headers) as ws:
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)
            assert ws.close_code == 4401
    with connect(f"{url}?api_key={KEY_B}") as ws:
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        assert ws.close_code == 4404  # someone else's run is "not found"
    with connect(url, additional_headers={"Authorization": f"Bearer {KEY_A}"}) as ws:
        seqs = []
        with pytest.raises(ConnectionClosed):
            while True:
                seqs.append(json.loads(ws.recv(timeout=5))["seq"])
        assert ws.close_code == 1000 and seqs == list(range(1, 7))
    with client_for(server, None) as anonymous:
        sse = anonymous.get(f"/api/sample/events/{owned_run}", params={"api_key": KEY_A})
        assert sse.status_code == 200 and "event: status" in sse.text
        # The query-string key is for streams only.
        assert_error(
            anonymous.get("/api/sample/runs", params={"api_key": KEY_A}), 401, "invalid_api_key"
        )


def test_idempotency_keys_are_scoped_per_api_key(server: LiveServer) -> None:
    body = {"kind": "fail"}
    headers = {"Idempotency-Key": "shared-name"}
    with client_for(server, KEY_A) as a, client_for(server, KEY_B) as b:
        first = a.post("/api/sample/run", json=body, headers=headers)
        second = b.post("/api/sample/run", json=body, headers=headers)
        assert first.status_code == second.status_code == 202
        assert first.json()["id"] != second.json()["id"]
        assert (
            a.post("/api/sample/run", json=body, headers=headers).json()["id"] == first.json()["id"]
        )


def test_keyring_keeps_digests_only() -> None:
    digest = hashlib.sha256(b"two").hexdigest()
    ring = KeyRing(api_keys=["one", f"sha256:{digest.upper()}"], admin_keys=["root"])
    one, two, root = ring.authenticate("one"), ring.authenticate("two"), ring.authenticate("root")
    assert one is not None and two is not None and root is not None
    assert (one.is_admin, two.is_admin, root.is_admin) == (False, False, True)
    assert two.key_id == digest[:16] and one.key_id != two.key_id
    assert one.visible_to == one.key_id and root.visible_to is None
    assert ring.authenticate("three") is None and ring.authenticate("") is None
    assert "one" not in repr(ring.__dict__)


def test_cors_preflight_needs_no_key_and_refusals_carry_cors_headers(
    tmp_path: Path, live_server: Callable[[FastAPI], LiveServer]
) -> None:
    origin = "http://ui.example"
    settings = make_settings(
        f"sqlite:///{tmp_path / 'h.db'}",
        **{"auth.enabled": True, "auth.api_keys": [KEY_A], "cors.allow_origins": [origin]},
    )
    with httpx.Client(base_url=live_server(create_app(settings)).url) as client:
        preflight = client.options(
            "/api/sample/run",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == origin
        refused = client.get("/api/sample/runs", headers={"Origin": origin})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == origin
        assert "x-request-id" in refused.headers
