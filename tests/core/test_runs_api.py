"""The run convention over HTTP against a real uvicorn server (DESIGN §2)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI

from core.api.app import create_base_app, no_engine
from tests.conftest import make_settings
from tests.support.poll import poll_until
from tests.support.sample_component import SAMPLE, create_app
from tests.support.server import LiveServer, serve

TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    url = f"sqlite:///{tmp_path_factory.mktemp('api') / 'hatchery.db'}"
    with serve(create_app(make_settings(url, **{"server.max_body_bytes": 4096}))) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def submit(client: httpx.Client, body: dict[str, Any], **headers: str) -> httpx.Response:
    return client.post("/api/sample/run", json=body, headers=headers)


def wait_for(
    client: httpx.Client, run_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 15
) -> dict[str, Any]:
    run: dict[str, Any] = poll_until(
        lambda: client.get(f"/api/sample/status/{run_id}").json(),
        done,
        timeout=timeout,
        what=f"run {run_id}",
    )
    return run


def finished(run: dict[str, Any]) -> bool:
    return run["status"] in TERMINAL


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    return dict(body["error"])


def test_submit_status_results(client: httpx.Client) -> None:
    response = submit(client, {"kind": "sleep", "steps": 8, "step_s": 0.05, "model": "m-1"})
    assert response.status_code == 202
    run = response.json()
    assert run["status"] in ("queued", "running") and run["model"] == "m-1"
    assert (
        response.headers["Location"] == run["links"]["status"] == f"/api/sample/status/{run['id']}"
    )
    assert run["links"]["ws"] == f"/api/sample/ws/{run['id']}"
    error = assert_error(client.get(run["links"]["results"]), 409, "run_not_finished")
    assert error["type"] == "conflict_error"

    running = wait_for(client, run["id"], lambda r: r["progress"] > 0 and r["status"] == "running")
    assert running["message"].startswith("step ") and running["elapsed_s"] is not None
    done = wait_for(client, run["id"], finished)
    assert done["status"] == "succeeded" and done["progress"] == 1.0 and done["attempts"] == 1
    assert done["finished_at"] >= done["started_at"] >= done["created_at"] and done["eta_s"] is None

    results = client.get(run["links"]["results"])
    assert results.status_code == 200
    assert results.json()["result"] == {"kind": "sleep", "done": 8, "attempt": 1}
    assert results.json()["run"]["id"] == run["id"]


def test_list_filters_and_pagination(client: httpx.Client) -> None:
    model = f"list-{uuid.uuid4().hex[:8]}"
    ids = [
        submit(client, {"kind": "sleep", "steps": 1, "model": model}).json()["id"] for _ in range(3)
    ]
    other = submit(client, {"kind": "chatty", "events": 1}).json()["id"]
    for run_id in [*ids, other]:
        wait_for(client, run_id, finished)

    page = client.get("/api/sample/runs", params={"model": model, "limit": 2}).json()
    assert page["count"] == 3 and [r["id"] for r in page["data"]] == ids[::-1][:2]
    page = client.get("/api/sample/runs", params={"model": model, "offset": 2}).json()
    assert [r["id"] for r in page["data"]] == ids[:1]
    page = client.get("/api/sample/runs", params={"model": model, "status": "succeeded"}).json()
    assert page["count"] == 3
    page = client.get("/api/sample/runs", params={"kind": "chatty", "limit": 500}).json()
    assert other in {r["id"] for r in page["data"]} and {r["kind"] for r in page["data"]} == {
        "chatty"
    }
    everywhere = client.get("/api/runs", params={"component": "sample", "model": model}).json()
    assert everywhere["count"] == 3

    assert (
        assert_error(client.get("/api/sample/runs?limit=0"), 422, "invalid_request")["param"]
        == "limit"
    )
    assert_error(client.get("/api/sample/runs?limit=501"), 422, "invalid_request")
    assert_error(client.get("/api/sample/runs?status=sleeping"), 422, "invalid_request")


def test_cancel_queued_and_running(client: httpx.Client) -> None:
    long = {"kind": "sleep", "steps": 400, "step_s": 0.05}
    running = [submit(client, long).json()["id"] for _ in range(2)]  # fills both slots
    for run_id in running:
        wait_for(client, run_id, lambda r: r["status"] == "running" and r["progress"] > 0)
    queued = submit(client, long).json()["id"]

    cancelled = client.post(f"/api/sample/cancel/{queued}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["error"]["code"] == "cancelled"

    started = time.monotonic()
    for run_id in running:
        assert client.post(f"/api/sample/cancel/{run_id}").status_code == 200
    for run_id in running:
        assert wait_for(client, run_id, finished, timeout=5)["status"] == "cancelled"
    assert time.monotonic() - started < 2.0

    results = client.get(f"/api/sample/results/{running[0]}").json()
    assert results["run"]["error"]["code"] == "cancelled"
    assert results["result"] == {"kind": "sleep", "done": 1, "attempt": 1}  # the partial result
    # Cancelling a finished run changes nothing.
    again = client.post(f"/api/sample/cancel/{running[0]}").json()
    assert again["status"] == "cancelled" and again["finished_at"] == results["run"]["finished_at"]


def test_failed_runs_carry_their_error(client: httpx.Client) -> None:
    plain = submit(client, {"kind": "fail", "message": "kaboom"}).json()["id"]
    platform = submit(client, {"kind": "fail", "platform": True}).json()["id"]
    run = wait_for(client, plain, finished)
    assert run["status"] == "failed"
    assert run["error"] == {"code": "job_failed", "message": "ValueError: kaboom"}
    assert wait_for(client, platform, finished)["error"]["code"] == "sample_refused"
    results = client.get(f"/api/sample/results/{plain}").json()
    assert results["result"] is None and results["run"]["error"]["code"] == "job_failed"


def test_error_bodies_have_one_shape(client: httpx.Client) -> None:
    assert_error(client.get("/nowhere"), 404, "not_found")
    assert_error(client.delete("/api/sample/run"), 405, "method_not_allowed")
    error = assert_error(submit(client, {"kind": "sleep", "steps": 0}), 422, "invalid_request")
    assert error["param"] == "steps" and "greater than or equal to 1" in error["message"]
    assert assert_error(submit(client, {"kind": "nope"}), 422, "invalid_request")["param"] == "kind"
    assert assert_error(submit(client, {}), 422, "invalid_request")["param"] == "kind"
    bad_json = client.post(
        "/api/sample/run", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert_error(bad_json, 422, "invalid_request")
    missing = assert_error(
        client.get(f"/api/sample/status/{uuid.uuid4().hex}"), 404, "run_not_found"
    )
    assert missing["type"] == "not_found_error" and missing["param"] == "id"
    assert_error(client.get("/api/sample/results/x"), 404, "run_not_found")
    assert_error(client.post("/api/sample/cancel/x"), 404, "run_not_found")


def test_body_size_limit(client: httpx.Client) -> None:
    big = {"kind": "fail", "message": "x" * 5000}
    assert_error(submit(client, big), 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        yield b'{"kind": "fail", "message": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}'

    chunked = client.post(
        "/api/sample/run", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert_error(chunked, 413, "payload_too_large")
    assert submit(client, {"kind": "fail", "message": "small"}).status_code == 202


def test_request_ids(client: httpx.Client) -> None:
    assert (
        client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"]
        == "abc-123"
    )
    generated = client.get("/nowhere").headers["X-Request-ID"]
    assert len(generated) == 32
    assert (
        client.get("/health", headers={"X-Request-ID": "bad id!"}).headers["X-Request-ID"]
        != "bad id!"
    )


def test_idempotent_submit(client: httpx.Client) -> None:
    key = uuid.uuid4().hex
    body = {"kind": "sleep", "steps": 1}
    first = submit(client, body, **{"Idempotency-Key": key})
    assert first.status_code == 202
    # Same request (also spelled differently: defaults filled in, other key order).
    again = client.post(
        "/api/sample/run",
        json={"step_s": 0.01, "steps": 1, "kind": "sleep"},
        headers={"Idempotency-Key": key},
    )
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    reused = submit(client, {"kind": "sleep", "steps": 2}, **{"Idempotency-Key": key})
    assert assert_error(reused, 422, "idempotency_key_reused")["param"] == "Idempotency-Key"
    assert_error(submit(client, body, **{"Idempotency-Key": "k" * 256}), 422, "invalid_request")
    other = submit(client, body, **{"Idempotency-Key": uuid.uuid4().hex})
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]


def test_fifty_concurrent_identical_posts_make_one_run(
    store_url: str, live_server: Callable[[FastAPI], LiveServer]
) -> None:
    server = live_server(create_app(make_settings(store_url)))
    body = {"kind": "sleep", "steps": 1, "model": "idem"}
    headers = {"Idempotency-Key": "same-key"}
    with httpx.Client(
        base_url=server.url, timeout=30, limits=httpx.Limits(max_connections=60)
    ) as client:
        with ThreadPoolExecutor(50) as pool:
            responses = list(pool.map(lambda _: submit(client, body, **headers), range(50)))
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] * 49 + [202], statuses
        assert len({r.json()["id"] for r in responses}) == 1
        assert client.get("/api/sample/runs", params={"model": "idem"}).json()["count"] == 1


def test_system_routes_and_openapi(client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready", "store": True, "engine": None}
    schema = client.get("/openapi.json").json()
    operations = {
        op["operationId"]: op for path in schema["paths"].values() for op in path.values()
    }
    for name in ("run", "status", "results", "runs", "cancel", "events"):
        assert f"sample_{name}" in operations
    assert {"all_runs", "health", "ready"} <= set(operations)
    for operation_id, operation in operations.items():
        success = operation["responses"].get("200") or operation["responses"]["202"]
        assert success.get("content"), f"{operation_id} declares no response model"
    run_op = operations["sample_run"]["responses"]
    assert "202" in run_op and "RunPublic" in str(run_op["202"])
    assert "SampleRunResults" in str(operations["sample_results"]["responses"]["200"])


def test_ready_is_503_while_engine_is_not_ready(
    tmp_path: Path, live_server: Callable[[FastAPI], LiveServer]
) -> None:
    from core.engine import Engine, ModelRegistry  # imports torch: only for this test

    # A real engine whose preload model is not loaded yet (preload() was never called).
    cold = Engine(ModelRegistry(tmp_path / "models"), max_batch=1, max_waiting=1, preload=["m"])
    app = create_app(make_settings(f"sqlite:///{tmp_path / 'h.db'}"), engine=cold)
    with httpx.Client(base_url=live_server(app).url) as client:
        assert_error(client.get("/ready"), 503, "not_ready")
        assert client.get("/health").status_code == 200


def test_unexpected_errors_are_a_logged_500_that_leaks_nothing(
    tmp_path: Path,
    live_server: Callable[[FastAPI], LiveServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    boom = APIRouter()

    @boom.get("/api/sample/boom")
    async def explode() -> dict[str, str]:
        raise RuntimeError("secret internals")

    spec = dataclasses.replace(SAMPLE, routers=[boom])
    app = create_base_app(
        make_settings(f"sqlite:///{tmp_path / 'h.db'}"), components=[spec], engine_factory=no_engine
    )
    with httpx.Client(base_url=live_server(app).url) as client:
        response = client.get("/api/sample/boom", headers={"X-Request-ID": "req-boom"})
    error = assert_error(response, 500, "internal_error")
    assert error["type"] == "server_error" and "secret" not in response.text
    assert response.headers["X-Request-ID"] == "req-boom"
    logged = [r for r in caplog.records if r.exc_info and "secret internals" in str(r.exc_info[1])]
    assert len(logged) == 1 and getattr(logged[0], "request_id", None) == "req-boom"


def test_nul_in_a_request_is_refused_with_422(client: httpx.Client) -> None:
    response = submit(client, {"kind": "fail", "message": "bad\x00byte"})
    body = assert_error(response, 422, "invalid_request")
    assert body["param"] == "message"
