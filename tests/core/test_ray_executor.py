"""The Ray executor against a real local Ray cluster (started once per session) and real stores.

Runs of the sample component go through the whole run convention: claimed by the API process,
run by a detached Ray actor (another process) that writes events to the store, followed over
the API. The actor reports its pid in its first ``log`` event, which lets the tests kill it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.config import Settings
from core.store import crud
from core.store.db import Store
from tests.conftest import make_settings
from tests.core.test_recovery import ServerProcess
from tests.support.poll import poll_until
from tests.support.sample_component import create_app
from tests.support.sample_runs import (
    IDLE_S,
    TERMINAL,
    finished,
    follow_ws,
    status,
    stored_events,
    submit,
    wait_until,
)
from tests.support.server import LiveServer, free_port

pytestmark = pytest.mark.ray


def ray_settings(store_url: str, address: str, **overrides: Any) -> Settings:
    base = {
        "executor.kind": "ray",
        "executor.ray_address": address,
        "executor.heartbeat_s": 0.5,
        "executor.concurrency": {"sample": 2},
    }
    return make_settings(store_url, **(base | overrides))


@pytest.fixture
def ray_server(
    store_url: str, ray_address: str, live_server: Callable[..., LiveServer]
) -> Iterator[httpx.Client]:
    server = live_server(create_app(ray_settings(store_url, ray_address)))
    with httpx.Client(base_url=server.url, timeout=10) as client:
        wait_until(lambda: client.get("/ready").status_code == 200, "ready", timeout=60)
        yield client


def worker_pid(client: httpx.Client, run_id: str, attempt: int = 1) -> int:
    """The pid the actor of ``attempt`` logged, read over the WebSocket as events arrive."""
    from websockets.sync.client import connect

    url = str(client.base_url).replace("http", "ws", 1) + f"/api/sample/ws/{run_id}"
    with connect(url, open_timeout=10) as socket:
        while True:
            event = httpx.Response(200, content=socket.recv(timeout=60)).json()
            data = event.get("data") or {}
            if event.get("type") == "log" and data.get("attempt") == attempt and "pid" in data:
                return int(data["pid"])
            assert not (event.get("type") == "status" and data.get("status") in TERMINAL), event


def test_a_run_goes_through_the_convention_on_a_ray_worker(ray_server: httpx.Client) -> None:
    run_id = submit(ray_server, {"kind": "sleep", "steps": 4, "step_s": 0.05})
    run = finished(ray_server, run_id)
    assert (run["status"], run["attempts"], run["progress"]) == ("succeeded", 1, 1.0)
    result = ray_server.get(f"/api/sample/results/{run_id}").json()["result"]
    assert result == {"kind": "sleep", "done": 4, "attempt": 1}
    events = stored_events(ray_server, run_id)
    logs = [e for e in events if e["type"] == "log"]
    assert logs and logs[0]["data"]["pid"] != os.getpid()  # it ran in another process
    assert [e["data"]["progress"] for e in events if e["type"] == "progress"] == [
        0.25,
        0.5,
        0.75,
        1.0,
    ]
    assert {e["attempt"] for e in events} == {1}


def test_killing_the_worker_mid_run_retries_it_with_attempt_markers(
    ray_server: httpx.Client,
) -> None:
    run_id = submit(ray_server, {"kind": "sleep", "steps": 60, "step_s": 0.05})
    pid = worker_pid(ray_server, run_id, attempt=1)
    wait_until(lambda: status(ray_server, run_id)["progress"] > 0, "progress")
    os.kill(pid, signal.SIGKILL)
    run = finished(ray_server, run_id)
    assert (run["status"], run["attempts"]) == ("succeeded", 2)
    result = ray_server.get(f"/api/sample/results/{run_id}").json()["result"]
    assert result == {"kind": "sleep", "done": 60, "attempt": 2}  # the final attempt's result

    events = stored_events(ray_server, run_id)
    markers = [i for i, e in enumerate(events) if e["type"] == "attempt"]
    assert len(markers) == 1
    marker = events[markers[0]]
    assert marker["data"] == {"attempt": 2, "reason": "worker_lost"} and marker["attempt"] == 2
    before, after = events[: markers[0]], events[markers[0] :]
    assert {e["attempt"] for e in before} == {1} and {e["attempt"] for e in after} == {2}
    assert {"status": "queued", "reason": "worker_lost"} in [
        e["data"] for e in before if e["type"] == "status"
    ]
    # The second attempt streamed its own full progress series, after the marker.
    progress = [e["data"]["progress"] for e in after if e["type"] == "progress"]
    assert len(progress) == 60 and progress[-1] == 1.0


def test_cancel_reaches_a_ray_worker(ray_server: httpx.Client) -> None:
    run_id = submit(ray_server, {"kind": "sleep", "steps": 400, "step_s": 0.05})
    worker_pid(ray_server, run_id)
    wait_until(lambda: status(ray_server, run_id)["progress"] > 0, "progress")
    assert ray_server.post(f"/api/sample/cancel/{run_id}").status_code == 200
    run = finished(ray_server, run_id)
    assert run["status"] == "cancelled" and run["progress"] < 1.0
    assert run["error"]["code"] == "cancelled"


def ray_env(address: str, **extra: str) -> dict[str, str]:
    return {
        "HATCHERY_EXECUTOR__KIND": "ray",
        "HATCHERY_EXECUTOR__RAY_ADDRESS": address,
        "HATCHERY_EXECUTOR__CONCURRENCY": '{"sample": 2}',
        **extra,
    }


def test_runs_stay_queued_while_ray_is_unreachable(sqlite_url: str, tmp_path: Path) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    server = ServerProcess(sqlite_url, tmp_path / "server.log", ray_env(nowhere))
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            reason = f"Ray at {nowhere} is unreachable"
            ready = wait_until(
                lambda: (
                    (answer := client.get("/ready")).status_code == 503
                    and reason in answer.text
                    and answer
                ),
                "a 503 naming the problem",
            )
            assert ready.json()["error"]["code"] == "not_ready"
            run_id = submit(client, {"kind": "sleep", "steps": 1})
            time.sleep(1.0)  # several claim rounds of a connected executor
            assert status(client, run_id)["status"] == "queued"
            assert client.get("/health").status_code == 200
    finally:
        server.stop()


def test_killing_the_api_leaves_ray_runs_running(
    store_url: str, ray_address: str, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    first = ServerProcess(store_url, log, ray_env(ray_address))
    try:
        with httpx.Client(base_url=first.url, timeout=10) as client:
            wait_until(lambda: client.get("/ready").status_code == 200, "ready")
            run_id = submit(client, {"kind": "sleep", "steps": 40, "step_s": 0.1})
            worker_pid(client, run_id)
    finally:
        first.kill()

    store = Store(store_url)
    try:

        def progressed() -> bool:
            with store.read_session() as session:
                run = crud.get_run(session, run_id=run_id)
            assert run is not None and run.status in ("running", "succeeded")
            return run.progress >= 0.5

        wait_until(progressed, "the run to go on without its API")
    finally:
        store.dispose()

    second = ServerProcess(store_url, log, ray_env(ray_address))
    try:
        with httpx.Client(base_url=second.url, timeout=10) as client:
            run = finished(client, run_id)
            assert (run["status"], run["attempts"]) == ("succeeded", 1)  # never retried
            events = stored_events(client, run_id)
            assert [e["type"] for e in events].count("attempt") == 0
    finally:
        second.stop()


def test_two_api_replicas_and_ray_a_follower_on_the_other_replica_gets_every_event(
    store_url: str, ray_address: str, live_server: Callable[..., LiveServer]
) -> None:
    first, second = (
        live_server(create_app(ray_settings(store_url, ray_address), ping_interval_s=IDLE_S))
        for _ in range(2)
    )
    with httpx.Client(base_url=first.url, timeout=10) as client:
        wait_until(lambda: client.get("/ready").status_code == 200, "ready")
        run_id = submit(client, {"kind": "chatty", "events": 30, "size": 10, "delay_s": 0.02})
        followed = follow_ws(second, run_id)
        assert finished(client, run_id)["status"] == "succeeded"
        stored = stored_events(client, run_id)
    assert followed == stored  # every event, in order, none twice
    assert [
        e["data"]["index"] for e in followed if e["type"] == "log" and "index" in e["data"]
    ] == (list(range(30)))


def test_kind_ray_without_ray_installed_exits_2_with_one_line(tmp_path: Path) -> None:
    # An interpreter where `import ray` fails, as in an installation without the ray extra.
    launcher = "import sys; sys.modules['ray'] = None; from hatchery_cli import main; main()"
    env = os.environ | {
        "HATCHERY_EXECUTOR__KIND": "ray",
        "HATCHERY_STORE__URL": f"sqlite:///{tmp_path / 'h.db'}",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    done = subprocess.run(
        [sys.executable, "-c", launcher, "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert "executor.kind is 'ray' but Ray cannot be imported" in lines[0]
    assert "Traceback" not in done.stderr


@pytest.mark.postgres  # replicas claiming at once queue on an advisory lock there
def test_concurrency_limits_hold_across_replicas(
    pg_url: str, ray_address: str, live_server: Callable[..., LiveServer]
) -> None:
    settings = ray_settings(pg_url, ray_address, **{"executor.concurrency": {"sample": 1}})
    first, second = (live_server(create_app(settings)) for _ in range(2))
    with (
        httpx.Client(base_url=first.url, timeout=10) as one,
        httpx.Client(base_url=second.url, timeout=10) as two,
    ):
        wait_until(lambda: one.get("/ready").status_code == 200, "ready")
        wait_until(lambda: two.get("/ready").status_code == 200, "ready")
        ids = [
            submit(client, {"kind": "sleep", "steps": 5, "step_s": 0.05}) for client in (one, two)
        ]
        ids += [submit(one, {"kind": "sleep", "steps": 5, "step_s": 0.05})]
        running: list[int] = []

        def succeeded() -> int:
            running.append(
                one.get("/api/sample/runs", params={"status": "running"}).json()["count"]
            )
            count: int = one.get("/api/sample/runs", params={"status": "succeeded"}).json()["count"]
            return count

        poll_until(succeeded, lambda count: count == 3, timeout=90, what="the three runs")
        assert max(running) == 1  # one at a time, although two replicas claim
        assert all(finished(one, run_id)["attempts"] == 1 for run_id in ids)


def test_ray_address_null_starts_ray_in_the_api_process(sqlite_url: str, tmp_path: Path) -> None:
    env = ray_env("", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    del env["HATCHERY_EXECUTOR__RAY_ADDRESS"]  # null: a local Ray instance of its own
    server = ServerProcess(sqlite_url, tmp_path / "server.log", env)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            wait_until(lambda: client.get("/ready").status_code == 200, "ready", timeout=120)
            run_id = submit(client, {"kind": "sleep", "steps": 3, "step_s": 0.05})
            assert finished(client, run_id)["status"] == "succeeded"
            pids = {
                e["data"].get("pid") for e in stored_events(client, run_id) if e["type"] == "log"
            }
            assert server.process.pid not in pids and None not in pids  # a Ray worker ran it
    finally:
        server.stop()  # stops its Ray instance too
