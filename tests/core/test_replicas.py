"""Two API replicas on one store: live events and cancels cross from one to the other.

Replica A runs the jobs; replica B only accepts and serves runs (``concurrency 0``), so
everything B's followers see was written by another process's executor and reached B through
the store watcher (LISTEN/NOTIFY on PostgreSQL, a short poll on SQLite). B's idle re-read is
set far beyond the socket timeouts, so a follower fed only by it would fail here.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.conftest import make_settings
from tests.support.sample_component import create_app
from tests.support.sample_runs import IDLE_S, finished, follow_ws, stored_events, submit, wait_until
from tests.support.server import LiveServer


@pytest.fixture
def replicas(
    store_url: str, live_server: Callable[..., LiveServer]
) -> tuple[LiveServer, LiveServer]:
    runner = live_server(create_app(make_settings(store_url), ping_interval_s=IDLE_S))
    front = make_settings(store_url, **{"executor.concurrency": {"sample": 0}})
    return runner, live_server(create_app(front, ping_interval_s=IDLE_S))


def test_a_follower_on_the_other_replica_gets_every_event_in_order(
    replicas: tuple[LiveServer, LiveServer],
) -> None:
    runner, front = replicas
    with httpx.Client(base_url=front.url, timeout=10) as client:
        run_id = submit(client, {"kind": "chatty", "events": 40, "size": 20, "delay_s": 0.02})
        followed = follow_ws(front, run_id)
        run = finished(client, run_id)
        assert run["status"] == "succeeded"
        stored = stored_events(client, run_id)
    assert [e["seq"] for e in followed] == list(range(1, len(stored) + 1))
    assert followed == stored
    logs = [e["data"]["index"] for e in followed if e["type"] == "log"]
    assert logs == list(range(40))
    del runner


def test_a_cancel_sent_to_the_other_replica_stops_the_run(
    replicas: tuple[LiveServer, LiveServer],
) -> None:
    runner, front = replicas
    with (
        httpx.Client(base_url=front.url, timeout=10) as client,
        httpx.Client(base_url=runner.url, timeout=10) as direct,
    ):
        run_id = submit(client, {"kind": "sleep", "steps": 400, "step_s": 0.05})
        wait_until(lambda: direct.get(f"/api/sample/status/{run_id}").json()["progress"] > 0, "go")
        assert client.post(f"/api/sample/cancel/{run_id}").status_code == 200
        run = finished(client, run_id)
        assert run["status"] == "cancelled" and run["progress"] < 1.0
