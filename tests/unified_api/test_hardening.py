"""What a hostile client tried against real servers (issue 20): every bad input a clean 4xx or
a close code with a reason, no credential in any log line, every model file inside the models
directory, failed authentications limited per address.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.conftest import NANO_MODEL, make_settings
from tests.support.sample_component import create_app as create_sample_app
from tests.support.sample_runs import finished, submit
from tests.support.server import LiveServer
from tests.unified_api.helpers import nano_settings, wait_ready
from unified_api.app import create_app

LiveServerFactory = Callable[[FastAPI], LiveServer]
COMPONENTS = ("test", "generator", "benchmark")
KEY = "hardening-key"


@pytest.fixture(scope="module")
def unified(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path
) -> Iterator[tuple[LiveServer, httpx.Client]]:
    """One unified server on bdh-nano, auth off, small limits, shared by the read-only tests."""
    settings = nano_settings(tmp_path_factory.mktemp("hardening"), models_dir)
    server = LiveServer(create_app(settings))
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            wait_ready(client)
            yield server, client
    finally:
        server.stop()


def closed_with(ws: ClientConnection) -> tuple[int | None, str | None]:
    """Read until the server closes; its close code and reason."""
    with pytest.raises(ConnectionClosed):
        while True:
            ws.recv(timeout=30)
    return ws.close_code, ws.close_reason


# 1. bounded integers in every query ---------------------------------------------------------


@pytest.mark.parametrize("offset", ["9223372036854775808", "9223372036854775807", "-1"])
def test_huge_list_offsets_are_422_on_every_store(
    store_url: str, offset: str, tmp_path: Path, models_dir: Path, live_server: LiveServerFactory
) -> None:
    settings = nano_settings(tmp_path, models_dir, **{"store.url": store_url, "model.preload": []})
    server = live_server(create_app(settings))
    paths = ["/api/runs", *(f"/api/{c}/runs" for c in COMPONENTS)]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for path in paths:
            response = client.get(path, params={"offset": offset})
            assert response.status_code == 422, f"{path}: {response.text}"
            assert response.json()["error"]["param"] == "offset"
            too_late = client.get(f"/api/test/events/{'0' * 32}", params={"after": offset})
            assert too_late.status_code in (404, 422), too_late.text
        assert client.get("/api/runs", params={"offset": 2**31 - 1}).json()["data"] == []


# 2. strict UTF-8 (lone surrogates) ----------------------------------------------------------

SURROGATE = '"\\ud800"'  # JSON for a lone surrogate: decodes, but cannot be encoded as UTF-8


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", f'{{"model": "{NANO_MODEL}", "prompt": {SURROGATE}, "max_tokens": 2}}'),
        (
            "/v1/chat/completions",
            f'{{"model": "{NANO_MODEL}", "max_tokens": 2, '
            f'"messages": [{{"role": "user", "content": {SURROGATE}}}]}}',
        ),
        ("/tokenize", f'{{"model": "{NANO_MODEL}", "prompt": {SURROGATE}}}'),
        ("/api/generator/run", f'{{"kind": "text", "prompts": [{SURROGATE}]}}'),
    ],
)
def test_lone_surrogates_are_refused_with_a_code(
    unified: tuple[LiveServer, httpx.Client], path: str, body: str
) -> None:
    _, client = unified
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 422), response.text
    assert response.status_code == (422 if path.startswith("/api/") else 400)
    assert response.json()["error"]["code"] == "invalid_utf8"


def test_lone_surrogate_on_the_interactive_socket_is_an_error_event(
    unified: tuple[LiveServer, httpx.Client],
) -> None:
    server, _ = unified
    message = f'{{"id": "q1", "model": "{NANO_MODEL}", "prompt": {SURROGATE}, "max_tokens": 2}}'
    with connect(f"{server.ws_url}/api/generator/stream", close_timeout=10) as ws:
        ws.send(message)
        answer = json.loads(ws.recv(timeout=30))
        assert answer["type"] == "error" and answer["data"]["code"] == "invalid_utf8"
        ws.send(json.dumps({"type": "ping"}))  # the connection is still served
        assert json.loads(ws.recv(timeout=30)) == {"type": "pong"}
        ws.close()
    assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1000


# 3. no credential in any log line -----------------------------------------------------------


def test_query_api_keys_never_reach_the_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, live_server: LiveServerFactory
) -> None:
    settings = make_settings(
        f"sqlite:///{tmp_path / 'h.db'}", **{"auth.enabled": True, "auth.api_keys": [KEY]}
    )
    server = LiveServer(create_sample_app(settings), access_log=True)
    server.start()
    wrong = "wrong-secret-0123"
    try:
        with caplog.at_level(logging.INFO), httpx.Client(base_url=server.url) as client:
            run_id = submit_with_key(client)
            finished_with_key(client, run_id)
            for key in (KEY, wrong):
                client.get(f"/api/sample/events/{run_id}", params={"api_key": key})
                with connect(f"{server.ws_url}/api/sample/ws/{run_id}?api_key={key}") as ws:
                    closed_with(ws)
    finally:
        server.stop()
    lines = [record.getMessage() for record in caplog.records]
    access = [line for line in lines if "/api/sample/events/" in line or "WebSocket" in line]
    assert len(access) >= 4, lines  # the access lines and the "[accepted]" lines were logged
    for line in lines:
        assert KEY not in line and wrong not in line, line
    assert any("api_key=[redacted]" in line for line in access), access


def submit_with_key(client: httpx.Client) -> str:
    response = client.post(
        "/api/sample/run", json={"kind": "sleep", "steps": 1}, headers={"X-API-Key": KEY}
    )
    assert response.status_code == 202, response.text
    run_id: str = response.json()["id"]
    return run_id


def finished_with_key(client: httpx.Client, run_id: str) -> None:
    client.headers["X-API-Key"] = KEY
    try:
        assert finished(client, run_id)["status"] == "succeeded"
    finally:
        del client.headers["X-API-Key"]


def test_every_log_record_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    from core.api.middleware import redact_credentials

    # Error logs carry URLs too (a failed request, a refused WebSocket): every record made in
    # the process is redacted, whichever logger and handler it goes to.
    with caplog.at_level(logging.INFO):
        logging.getLogger("uvicorn.error").error("failed on %s", "/api/x/ws/1?after=0&api_key=s3")
        logging.getLogger("some.library").warning("GET /a?API_KEY=s3&b=1 -> 500")
    assert [r.getMessage() for r in caplog.records] == [
        "failed on /api/x/ws/1?after=0&api_key=[redacted]",
        "GET /a?API_KEY=[redacted]&b=1 -> 500",
    ]
    assert redact_credentials("Bearer abc api_key=%20x") == "Bearer abc api_key=[redacted]"


# 4. every model file inside the models directory --------------------------------------------


def test_a_symlinked_weight_file_is_refused(
    tmp_path: Path, models_dir: Path, live_server: LiveServerFactory
) -> None:
    models = tmp_path / "models"
    shutil.copytree(models_dir / NANO_MODEL, models / NANO_MODEL)
    outside = tmp_path / "outside"
    shutil.copytree(models_dir / NANO_MODEL, outside)
    evil = models / "evil"
    evil.mkdir()
    shutil.copy(outside / "config.json", evil / "config.json")
    (evil / "model.safetensors").symlink_to(outside / "model.safetensors")
    settings = nano_settings(tmp_path, models, **{"model.preload": []})
    server = live_server(create_app(settings))
    with httpx.Client(base_url=server.url, timeout=60) as client:
        names = [model["id"] for model in client.get("/v1/models").json()["data"]]
        assert NANO_MODEL in names and "evil" not in names
        body = {"model": "evil", "prompt": "a", "max_tokens": 1}
        response = client.post("/v1/completions", json=body)
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "model_not_found"


# 5. WebSocket frames obey server.max_body_bytes ---------------------------------------------


def test_websocket_frames_over_the_body_limit_close_1009(
    tmp_path: Path, models_dir: Path, live_server: LiveServerFactory
) -> None:
    limit = 4096
    settings = nano_settings(tmp_path, models_dir, **{"server.max_body_bytes": limit})
    server = live_server(create_app(settings))
    with httpx.Client(base_url=server.url, timeout=60) as client:
        wait_ready(client)
        run = client.post(
            "/api/generator/run", json={"kind": "text", "prompts": ["a"], "max_tokens": 2}
        )
        assert run.status_code == 202, run.text
        run_id = run.json()["id"]
    for path in ("/api/generator/stream", f"/api/generator/ws/{run_id}?after=0"):
        with connect(f"{server.ws_url}{path}", max_size=None) as ws:
            ws.send(json.dumps({"type": "ping"}))  # within the limit: served
            ws.send(json.dumps({"type": "ping", "pad": "x" * (limit + 1)}))
            code, reason = closed_with(ws)
        assert code == 1009, (path, code, reason)
        assert reason and str(limit) in reason


# 6. failed authentications are limited per client address -----------------------------------


def test_key_guessing_gets_429_with_retry_after(
    tmp_path: Path, live_server: LiveServerFactory
) -> None:
    settings = make_settings(
        f"sqlite:///{tmp_path / 'h.db'}",
        **{"auth.enabled": True, "auth.api_keys": [KEY], "auth.max_failures_per_minute": 5},
    )
    server = live_server(create_sample_app(settings))
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/api/sample/runs", headers={"X-API-Key": KEY}).status_code == 200
        statuses = [
            client.get("/api/sample/runs", headers={"X-API-Key": f"guess-{i}"}).status_code
            for i in range(8)
        ]
        assert statuses == [401] * 5 + [429] * 3
        refused = client.get("/api/sample/runs", headers={"X-API-Key": "guess-9"})
        assert refused.json()["error"]["code"] == "too_many_failed_authentications"
        assert int(refused.headers["Retry-After"]) >= 1
        # Blocked means blocked: a right key from this address would tell a guess apart.
        assert client.get("/api/sample/runs", headers={"X-API-Key": KEY}).status_code == 429
    with connect(f"{server.ws_url}/api/sample/ws/{'0' * 32}?api_key=guess") as ws:
        assert closed_with(ws)[0] == 4429


def test_max_failures_setting_is_validated() -> None:
    from core.config import load_settings
    from core.errors import ConfigError

    assert load_settings().auth.max_failures_per_minute > 0
    with pytest.raises(ConfigError, match="max_failures_per_minute"):
        load_settings(**{"auth.max_failures_per_minute": 0})


# 7. WebSocket edges -------------------------------------------------------------------------


def test_close_during_backlog_replay_is_answered(
    tmp_path: Path, live_server: LiveServerFactory
) -> None:
    # The server answers a close at once, mid-replay (uvicorn writes the reply as the close
    # arrives, and the follower stops writing). The reply queues behind the events already
    # sent, so the client must go on reading to see it: websockets' default flow control
    # (max_queue) stops reading once 16 messages wait, and then no reply can reach it.
    server = live_server(create_sample_app(make_settings(f"sqlite:///{tmp_path / 'h.db'}")))
    with httpx.Client(base_url=server.url, timeout=60) as client:
        run_id = submit(client, {"kind": "chatty", "events": 1500, "size": 2000})
        assert finished(client, run_id)["status"] == "succeeded"
    url = f"{server.ws_url}/api/sample/ws/{run_id}"
    for _ in range(4):
        with connect(url, close_timeout=10, max_queue=None) as ws:
            ws.recv(timeout=30)
            ws.close()
        assert ws.protocol.close_rcvd is not None, ws.protocol.close_sent
        assert ws.protocol.close_rcvd.code == 1000


@pytest.mark.parametrize("after", ["-1", "abc", "9223372036854775808"])
def test_a_bad_after_closes_4400_with_a_reason(
    tmp_path: Path, live_server: LiveServerFactory, after: str
) -> None:
    server = live_server(create_sample_app(make_settings(f"sqlite:///{tmp_path / 'h.db'}")))
    with httpx.Client(base_url=server.url, timeout=60) as client:
        run_id = submit(client, {"kind": "sleep", "steps": 1})
    with connect(f"{server.ws_url}/api/sample/ws/{run_id}?after={after}") as ws:
        code, reason = closed_with(ws)
    assert code == 4400
    assert reason and "after" in reason


# 8. the OpenAPI document says what the API does ---------------------------------------------


def test_openapi_documents_security_and_error_statuses(
    tmp_path: Path, models_dir: Path, live_server: LiveServerFactory
) -> None:
    settings = nano_settings(tmp_path, models_dir, **{"auth.enabled": True, "auth.api_keys": [KEY]})
    server = live_server(create_app(settings))
    with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=60) as client:
        document = client.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert {scheme["type"] for scheme in schemes.values()} >= {"http", "apiKey"}
    paths = document["paths"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            if path in ("/health", "/ping"):
                assert operation.get("security") == [], path
                continue
            assert operation.get("security"), f"{method} {path}"
            assert "401" in operation["responses"], f"{method} {path}"
    for component in COMPONENTS:
        assert "400" in paths[f"/api/{component}/events/{{run_id}}"]["get"]["responses"]
        assert "400" in paths[f"/api/{component}/run"]["post"]["responses"]
        assert "413" in paths[f"/api/{component}/run"]["post"]["responses"]


def stop_schema(document: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = document["components"]["schemas"]["TextRunRequest"]["properties"]
    return schema["stop"]


def test_types_are_as_strict_as_the_schema_says(unified: tuple[LiveServer, httpx.Client]) -> None:
    _, client = unified
    # A single stop string is accepted, and the schema says so.
    stop = stop_schema(client.get("/openapi.json").json())
    assert {"string", "array"} <= {option.get("type") for option in stop["anyOf"]}
    accepted = client.post(
        "/api/generator/run", json={"kind": "text", "prompts": ["a"], "stop": "AAA"}
    )
    assert accepted.status_code == 202, accepted.text
    # A boolean or a numeric string where the schema says number or integer is refused.
    quality = {"kind": "quality", "model": NANO_MODEL, "max_repetition": False}
    refused = client.post("/api/test/run", json=quality)
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["param"] == "max_repetition"
    for bad in ({"max_tokens": True}, {"max_tokens": "2"}, {"temperature": "1"}):
        body = {"model": NANO_MODEL, "prompt": "a", **bad}
        response = client.post("/v1/completions", json=body)
        assert response.status_code == 400, (bad, response.text)
