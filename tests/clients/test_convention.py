"""Every run-convention method of both clients, for every component, against a real server."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from clients import (
    Conflict,
    MonitorTimeout,
    NotFound,
    RunEventPublic,
    RunPublic,
    RunResults,
    RunsPublic,
    RunStatus,
    ValidationFailed,
)
from tests.clients.conftest import TERMINAL, submit, wait_until
from tests.support.server import LiveServer


@dataclass(frozen=True)
class Family:
    """The method names of one component's family on the clients."""

    component: str
    status: str
    results: str
    list: str
    cancel: str
    monitor: str
    monitor_ws: str


FAMILIES = [
    Family(
        "test",
        "get_test_status",
        "get_test_results",
        "list_test_runs",
        "cancel_test",
        "monitor_test",
        "monitor_test_ws",
    ),
    Family(
        "generator",
        "get_generation_status",
        "get_generation_results",
        "list_generation_runs",
        "cancel_generation",
        "monitor_generation",
        "monitor_generation_ws",
    ),
    Family(
        "benchmark",
        "get_benchmark_status",
        "get_benchmark_results",
        "list_benchmark_runs",
        "cancel_benchmark",
        "monitor_benchmark",
        "monitor_benchmark_ws",
    ),
]


@pytest.fixture(params=FAMILIES, ids=[family.component for family in FAMILIES])
def family(request: pytest.FixtureRequest) -> Family:
    chosen: Family = request.param
    return chosen


def method(client: Any, name: str) -> Any:
    return getattr(client, name)


def long_run(server: LiveServer, component: str, model: str | None = None) -> str:
    body = {"kind": "sleep", "steps": 2000, "step_s": 0.01, "model": model}
    return submit(server.url, component, body)


def test_monitor_status_and_results(
    client: Any, standin: LiveServer, family: Family, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = submit(standin.url, family.component, {"kind": "sleep", "steps": 3, "model": "m-a"})
    results = method(client, family.monitor)(run_id, poll_interval=0.02, timeout=20)
    assert capsys.readouterr().out == ""  # progress=True draws nothing off a terminal
    assert isinstance(results, RunResults) and results.succeeded
    assert results.run.id == run_id and results.run.component == family.component
    assert results.result_dict() == {"kind": "sleep", "done": 3, "attempt": 1}

    status = method(client, family.status)(run_id)
    assert isinstance(status, RunPublic)
    assert status.status == RunStatus.succeeded and status.progress == 1.0
    assert status.model == "m-a" and status.links.ws == f"/api/{family.component}/ws/{run_id}"
    again = method(client, family.results)(run_id)
    assert again.run.status == RunStatus.succeeded and again.result == results.result


def test_results_conflict_then_cancel(client: Any, standin: LiveServer, family: Family) -> None:
    run_id = long_run(standin, family.component)
    with pytest.raises(Conflict) as caught:
        method(client, family.results)(run_id)
    assert caught.value.status_code == 409 and caught.value.code == "run_not_finished"
    assert caught.value.param == "id"

    cancelled = method(client, family.cancel)(run_id)
    assert isinstance(cancelled, RunPublic) and cancelled.id == run_id
    wait_until(standin.url, family.component, run_id, lambda run: run["status"] in TERMINAL)
    results = method(client, family.results)(run_id)
    assert results.run.status == RunStatus.cancelled and results.run.error is not None


def test_monitor_ws_streams_every_event(client: Any, standin: LiveServer, family: Family) -> None:
    run_id = submit(standin.url, family.component, {"kind": "chatty", "events": 6, "size": 3})
    events = list(method(client, family.monitor_ws)(run_id))
    assert all(isinstance(event, RunEventPublic) for event in events)
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    assert [event.data["index"] for event in events if event.type == "log"] == list(range(6))
    assert events[-1].is_terminal and events[-1].data["status"] == "succeeded"
    assert any(event.type == "result" for event in events)

    # Resuming a finished run from a seq replays only what follows it.
    tail = list(method(client, family.monitor_ws)(run_id, after=3))
    assert [event.seq for event in tail] == [event.seq for event in events[3:]]


def test_list_runs_filters_and_pages(client: Any, standin: LiveServer, family: Family) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"
    ids = [
        submit(standin.url, family.component, {"kind": "sleep", "steps": 1, "model": model})
        for _ in range(3)
    ]
    for run_id in ids:
        wait_until(standin.url, family.component, run_id, lambda run: run["status"] in TERMINAL)
    listed = method(client, family.list)(model=model)
    assert isinstance(listed, RunsPublic) and listed.count == 3
    assert [run.id for run in listed.data] == ids[::-1]  # newest first
    page = method(client, family.list)(model=model, limit=2, offset=2)
    assert page.count == 3 and [run.id for run in page.data] == [ids[0]]
    assert method(client, family.list)(model=model, status="succeeded").count == 3
    assert method(client, family.list)(model=model, status=RunStatus.failed).count == 0
    assert method(client, family.list)(model=model, kind="chatty").count == 0


def test_list_all_runs(client: Any, standin: LiveServer) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"
    for component in ("test", "benchmark"):
        submit(standin.url, component, {"kind": "sleep", "steps": 1, "model": model})
    everything = client.list_runs(model=model)
    assert everything.count == 2
    assert {run.component for run in everything.data} == {"test", "benchmark"}
    only = client.list_runs(component="benchmark", model=model)
    assert [run.component for run in only.data] == ["benchmark"]


def test_failed_run_results_carry_the_error(client: Any, standin: LiveServer) -> None:
    run_id = submit(standin.url, "test", {"kind": "fail", "message": "no luck", "platform": True})
    results = client.monitor_test(run_id, poll_interval=0.02, timeout=20, progress=False)
    assert results.run.status == RunStatus.failed and not results.succeeded
    assert results.run.error.code == "sample_refused" and results.run.error.message == "no luck"
    events = list(client.monitor_test_ws(run_id))
    assert [event.type for event in events][-2:] == ["error", "status"]


def test_monitor_gives_up_at_its_timeout(client: Any, standin: LiveServer) -> None:
    run_id = long_run(standin, "test")
    try:
        with pytest.raises(MonitorTimeout) as caught:
            client.monitor_test(run_id, poll_interval=0.05, timeout=0.3)
        assert isinstance(caught.value, TimeoutError) and run_id in str(caught.value)
    finally:
        client.cancel_test(run_id)


def test_unknown_runs_are_not_found(client: Any, family: Family) -> None:
    missing = uuid.uuid4().hex
    for name in (family.status, family.results, family.cancel):
        with pytest.raises(NotFound) as caught:
            method(client, name)(missing)
        assert caught.value.status_code == 404 and caught.value.code == "run_not_found"
    with pytest.raises(NotFound):
        list(method(client, family.monitor_ws)(missing))


def test_invalid_requests_are_validation_failures(client: Any) -> None:
    with pytest.raises(ValidationFailed) as caught:
        client.run_test("m", "sleep", steps=0)
    assert caught.value.status_code == 422 and caught.value.code == "invalid_request"
    assert caught.value.param == "steps"
    with pytest.raises(ValidationFailed) as caught:
        client.list_test_runs(limit=0)
    assert caught.value.param == "limit"
    with pytest.raises(ValidationFailed) as caught:
        client.run_benchmark("no-such-kind")
    assert caught.value.param == "kind"


def test_health(client: Any) -> None:
    assert client.health().status == "ok"


def test_same_idempotency_key_makes_one_run(client: Any, standin: LiveServer) -> None:
    model, key = f"m-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    first = client.run_test(model, "sleep", steps=1, idempotency_key=key)
    second = client.run_test(model, "sleep", steps=1, idempotency_key=key)
    assert first.id == second.id
    assert client.list_test_runs(model=model).count == 1
    with pytest.raises(ValidationFailed) as caught:
        client.run_test(model, "sleep", steps=2, idempotency_key=key)
    assert caught.value.code == "idempotency_key_reused"
    # Without a key given, each call is its own logical request: two runs.
    client.run_test(model, "sleep", steps=1)
    assert client.list_test_runs(model=model).count == 2


def test_events_stop_when_the_consumer_stops(client: Any, standin: LiveServer) -> None:
    run_id = submit(standin.url, "test", {"kind": "chatty", "events": 20, "delay_s": 0.01})
    stream = client.monitor_test_ws(run_id)
    seqs = [event.seq for _, event in zip(range(3), stream, strict=False)]
    stream.close()  # leaves the socket: nothing keeps reading in the background
    assert seqs == [1, 2, 3]
    results = client.monitor_test(run_id, poll_interval=0.02, timeout=20, progress=False)
    assert results.succeeded
