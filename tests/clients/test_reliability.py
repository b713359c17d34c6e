"""Retries that never change what the server did, and streams that survive broken connections.

Connections are broken by a real TCP proxy between the client and a real server; refusals
come from a tiny app that answers 503/429 a set number of times.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from clients import RateLimited, RequestTimeout, RetryPolicy, ServerError, TransportError
from core.store.models import Run, RunPublic
from tests.clients.conftest import submit
from tests.support.server import LiveServer, free_port
from tests.support.tcp_proxy import TcpProxy

FAST = RetryPolicy(max_attempts=4, backoff_base_s=0.01, backoff_max_s=0.05)


@pytest.fixture
def proxy(standin: LiveServer) -> Iterator[TcpProxy]:
    proxy = TcpProxy(standin.port).start()
    yield proxy
    proxy.stop()


def refusing_app(refusals: int, status: int, retry_after: str | None) -> FastAPI:
    """Refuses the first ``refusals`` requests of each route, then answers; records them."""
    app = FastAPI()
    seen: dict[str, list[dict[str, str]]] = {}
    app.state.seen = seen

    def refusal(request: Request) -> JSONResponse | None:
        calls = seen.setdefault(request.url.path, [])
        calls.append(dict(request.headers))
        if len(calls) > refusals:
            return None
        error = {"message": "busy", "type": "overloaded_error", "param": None, "code": "overloaded"}
        headers = {"Retry-After": retry_after} if retry_after is not None else None
        return JSONResponse({"error": error}, status_code=status, headers=headers)

    @app.get("/health")
    async def health(request: Request) -> Any:
        return refusal(request) or {"status": "ok"}

    @app.post("/api/test/run", status_code=202)
    async def run(request: Request) -> Any:
        body = await request.json()
        answer = RunPublic.from_run(Run(component="test", kind=body["kind"], params=body))
        return refusal(request) or answer.model_dump(mode="json")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return refusal(request) or {"id": "c", "choices": [{"index": 0, "text": "hi"}]}

    return app


@pytest.mark.parametrize("retry_after", ["0", "1"])
def test_503_is_retried_after_retry_after(
    make_client: Callable[..., Any], live_server: Callable[[FastAPI], LiveServer], retry_after: str
) -> None:
    refusals = 2 if retry_after == "0" else 1
    app = refusing_app(refusals, 503, retry_after)
    client = make_client(live_server(app).url, retry=FAST)
    assert client.health().status == "ok"
    assert len(app.state.seen["/health"]) == refusals + 1


def test_a_retried_submission_keeps_its_idempotency_key(
    make_client: Callable[..., Any], live_server: Callable[[FastAPI], LiveServer]
) -> None:
    app = refusing_app(2, 503, "0")
    client = make_client(live_server(app).url, retry=FAST)
    run = client.run_test("bdh-nano", "smoke")
    assert run.kind == "smoke" and run.params == {"kind": "smoke", "model": "bdh-nano"}
    keys = [headers["idempotency-key"] for headers in app.state.seen["/api/test/run"]]
    assert len(keys) == 3 and len(set(keys)) == 1 and len(keys[0]) == 32
    client.run_test("bdh-nano", "smoke")  # a new logical call gets a new key
    assert app.state.seen["/api/test/run"][-1]["idempotency-key"] != keys[0]


def test_retries_run_out(
    make_client: Callable[..., Any], live_server: Callable[[FastAPI], LiveServer]
) -> None:
    server = live_server(refusing_app(100, 503, "0"))
    client = make_client(server.url, retry=RetryPolicy(max_attempts=3, backoff_base_s=0.01))
    with pytest.raises(ServerError) as caught:
        client.health()
    assert caught.value.status_code == 503 and caught.value.code == "overloaded"
    assert caught.value.retry_after == 0.0
    assert len(server.app.state.seen["/health"]) == 3

    limited = live_server(refusing_app(100, 429, "7"))
    client = make_client(limited.url, retry=RetryPolicy(max_attempts=2, max_retry_after_s=5))
    with pytest.raises(RateLimited) as rate_limited:
        client.health()
    # Asked to wait longer than the client is willing to: it surfaces at once.
    assert rate_limited.value.retry_after == 7.0 and rate_limited.value.status_code == 429
    assert len(limited.app.state.seen["/health"]) == 1


def test_a_slow_answer_times_out(
    make_client: Callable[..., Any], live_server: Callable[[FastAPI], LiveServer]
) -> None:
    slow = FastAPI()
    slow.state.calls = 0

    @slow.get("/health")
    async def health() -> dict[str, str]:
        slow.state.calls += 1
        await asyncio.sleep(1)
        return {"status": "ok"}

    retry = RetryPolicy(max_attempts=2, backoff_base_s=0.01)
    client = make_client(live_server(slow).url, timeout=0.2, retry=retry)
    with pytest.raises(RequestTimeout) as caught:
        client.health()
    assert caught.value.code == "timeout" and slow.state.calls == 2  # a read: retried once


def test_unreachable_server_is_a_transport_error(make_client: Callable[..., Any]) -> None:
    client = make_client(f"http://127.0.0.1:{free_port()}", retry=FAST, connect_timeout=2)
    with pytest.raises(TransportError) as caught:
        client.health()
    assert caught.value.code == "connection_error"


def test_a_dropped_answer_to_a_submission_does_not_make_a_second_run(
    make_client: Callable[..., Any], proxy: TcpProxy
) -> None:
    client = make_client(proxy.url, retry=FAST)
    model = f"m-{uuid.uuid4().hex[:8]}"
    proxy.swallow_next_post()
    run = client.run_test(model, "sleep", steps=1)  # the server ran it; the answer was lost
    assert proxy.swallowed == 1 and run.model == model
    listed = client.list_test_runs(model=model)
    assert listed.count == 1 and listed.data[0].id == run.id


def test_a_dropped_answer_to_a_completion_is_not_resent(
    make_client: Callable[..., Any], live_server: Callable[[FastAPI], LiveServer]
) -> None:
    app = refusing_app(0, 503, None)
    proxy = TcpProxy(live_server(app).port).start()
    try:
        client = make_client(proxy.url, retry=FAST)
        proxy.swallow_next_post()
        with pytest.raises(TransportError):
            client.complete("bdh-nano", "hi")  # generation is not deduplicated: not retried
        assert len(app.state.seen["/v1/completions"]) == 1
        assert client.complete("bdh-nano", "hi").text == "hi"
    finally:
        proxy.stop()


def test_ws_monitor_resumes_after_a_dropped_connection(
    make_client: Callable[..., Any], standin: LiveServer, proxy: TcpProxy
) -> None:
    run_id = submit(standin.url, "test", {"kind": "chatty", "events": 40, "delay_s": 0.05})
    client = make_client(proxy.url, retry=FAST)
    events = []
    for event in client.monitor_test_ws(run_id):
        events.append(event)
        if len(events) in (4, 12):
            proxy.drop_all()  # cut mid-stream, twice, without a close frame
    seqs = [event.seq for event in events]
    assert seqs == list(range(1, len(seqs) + 1))  # no gap, no duplicate
    assert events[-1].is_terminal and events[-1].data["status"] == "succeeded"
    assert sum(event.type == "log" for event in events) == 40
    assert proxy.connections >= 3


def test_ws_monitor_gives_up_when_the_server_stays_away(
    make_client: Callable[..., Any], standin: LiveServer
) -> None:
    run_id = submit(standin.url, "test", {"kind": "sleep", "steps": 1})
    client = make_client(f"http://127.0.0.1:{free_port()}", retry=FAST, connect_timeout=2)
    with pytest.raises(TransportError) as caught:
        list(client.monitor_test_ws(run_id))
    assert "after seq 0" in str(caught.value)
