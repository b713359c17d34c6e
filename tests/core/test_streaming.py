"""Following runs live: WebSocket and SSE against a real server, and the event bus itself."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from core.runs.events import EventBus, follow
from core.store.models import RunEventPublic
from tests.conftest import make_settings
from tests.support.poll import poll_until
from tests.support.sample_component import create_app
from tests.support.server import LiveServer, serve


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    url = f"sqlite:///{tmp_path_factory.mktemp('stream') / 'hatchery.db'}"
    app = create_app(make_settings(url), event_queue_size=8, ping_interval_s=0.5)
    with serve(app) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def start(client: httpx.Client, body: dict[str, Any]) -> str:
    response = client.post("/api/sample/run", json=body)
    assert response.status_code == 202
    run_id: str = response.json()["id"]
    return run_id


def wait_finished(client: httpx.Client, run_id: str) -> dict[str, Any]:
    run: dict[str, Any] = poll_until(
        lambda: client.get(f"/api/sample/status/{run_id}").json(),
        lambda run: run["status"] in ("succeeded", "failed", "cancelled"),
        what=f"run {run_id} to finish",
    )
    return run


def read_events(ws: ClientConnection, limit: int | None = None) -> list[dict[str, Any]]:
    """Event messages (pings skipped) until ``limit`` or until the server closes."""
    events: list[dict[str, Any]] = []
    try:
        while limit is None or len(events) < limit:
            message = json.loads(ws.recv(timeout=10))
            if "seq" in message:
                events.append(message)
    except ConnectionClosed:
        pass
    return events


def close_code(ws: ClientConnection) -> int | None:
    return ws.close_code


def test_ws_replay_across_reconnect_has_no_gap_or_duplicate(
    server: LiveServer, client: httpx.Client
) -> None:
    run_id = start(client, {"kind": "chatty", "events": 60, "delay_s": 0.01})
    url = f"{server.ws_url}/api/sample/ws/{run_id}"
    with connect(url) as ws:
        first = read_events(ws, limit=12)
    last = first[-1]["seq"]
    with connect(f"{url}?after={last}") as ws:
        rest = read_events(ws)
        assert close_code(ws) == 1000
    seqs = [event["seq"] for event in first + rest]
    assert seqs == list(range(1, len(seqs) + 1))
    assert rest[-1]["type"] == "status" and rest[-1]["data"]["status"] == "succeeded"
    assert len(seqs) == 1 + 1 + 60 + 1 + 1  # queued, running, 60 logs, result, succeeded
    assert {event["run_id"] for event in first + rest} == {run_id}


def test_ws_on_a_finished_run(server: LiveServer, client: httpx.Client) -> None:
    run_id = start(client, {"kind": "chatty", "events": 3})
    wait_finished(client, run_id)
    with connect(f"{server.ws_url}/api/sample/ws/{run_id}") as ws:
        events = read_events(ws)
        assert close_code(ws) == 1000
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5, 6, 7]
    with connect(f"{server.ws_url}/api/sample/ws/{run_id}?after=7") as ws:
        assert read_events(ws) == []
        assert close_code(ws) == 1000


def test_ws_commands_pings_and_cancel(server: LiveServer, client: httpx.Client) -> None:
    run_id = start(client, {"kind": "sleep", "steps": 100, "step_s": 1.0})
    with connect(f"{server.ws_url}/api/sample/ws/{run_id}?after=1000000") as ws:
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv(timeout=5)) == {"type": "pong"}
        assert json.loads(ws.recv(timeout=5)) == {"type": "ping"}  # idle: the server pings
        ws.send("not json")
        assert json.loads(ws.recv(timeout=5))["error"]["code"] == "invalid_message"
    with connect(f"{server.ws_url}/api/sample/ws/{run_id}") as ws:
        ws.send(json.dumps({"type": "cancel"}))
        events = read_events(ws)
        assert close_code(ws) == 1000
    assert events[-1]["data"]["status"] == "cancelled"


def test_ws_unknown_run_closes_4404(server: LiveServer) -> None:
    with connect(f"{server.ws_url}/api/sample/ws/{'0' * 32}") as ws:
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        assert close_code(ws) == 4404


def parse_sse(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1)
            for line in block.splitlines()
            if ": " in line and not line.startswith(":")
        )
        if "data" in fields:
            event = json.loads(fields["data"])
            assert int(fields["id"]) == event["seq"] and fields["event"] == event["type"]
            events.append(event)
    return events


def test_sse_live_and_with_last_event_id(client: httpx.Client) -> None:
    run_id = start(client, {"kind": "chatty", "events": 20, "delay_s": 0.01})
    with client.stream("GET", f"/api/sample/events/{run_id}") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        live = parse_sse(response.read().decode())
    assert [e["seq"] for e in live] == list(range(1, 25))
    assert live[-1]["data"]["status"] == "succeeded"

    resumed = client.get(f"/api/sample/events/{run_id}", headers={"Last-Event-ID": "20"})
    assert [e["seq"] for e in parse_sse(resumed.text)] == [21, 22, 23, 24]
    by_query = client.get(f"/api/sample/events/{run_id}", params={"after": 22})
    assert [e["seq"] for e in parse_sse(by_query.text)] == [23, 24]
    bad = client.get(f"/api/sample/events/{run_id}", headers={"Last-Event-ID": "x"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "Last-Event-ID"
    assert client.get(f"/api/sample/events/{'0' * 32}").status_code == 404


def test_slow_ws_reader_is_dropped_and_memory_stays_bounded(
    server: LiveServer, client: httpx.Client
) -> None:
    bus: EventBus = server.app.state.event_bus
    dropped_before = bus.dropped_total
    run_id = start(client, {"kind": "chatty", "events": 2000, "size": 32_000})
    stalled = _stalled_websocket(server.port, f"/api/sample/ws/{run_id}")
    try:
        # 32 kB events keep coming; the stalled reader's socket buffers fill, then its queue.
        def dropped() -> int:
            assert bus.buffered_count() <= bus.queue_size * max(1, bus.subscriber_count())
            return bus.dropped_total

        poll_until(
            dropped,
            lambda total: total > dropped_before,
            timeout=20,
            what="the stalled subscriber to be dropped",
        )
        assert bus.buffered_count() <= bus.queue_size * max(1, bus.subscriber_count())
    finally:
        stalled.close()
    client.post(f"/api/sample/cancel/{run_id}")
    wait_finished(client, run_id)
    poll_until(  # the handler noticed the disconnect and cleaned up
        lambda: bus.subscriber_count(run_id),
        lambda count: count == 0,
        timeout=10,
        what="the dropped subscriber to be cleaned up",
    )


def _stalled_websocket(port: int, path: str) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert sock.recv(12) == b"HTTP/1.1 101"
    return sock


# The bus and follow() on their own -------------------------------------------------------


def event(seq: int, status: str | None = None) -> RunEventPublic:
    data = {"status": status} if status else {}
    return RunEventPublic(
        seq=seq,
        run_id="r",
        type="status" if status else "log",
        ts="2026-01-01T00:00:00Z",
        data=data,
    )


async def test_bus_delivers_from_threads_and_drops_laggards() -> None:
    bus = EventBus(queue_size=3)
    bus.bind(asyncio.get_running_loop())
    fast, slow = bus.subscribe("r"), bus.subscribe("r")
    other = bus.subscribe("elsewhere")
    for seq in range(1, 3):
        threading.Thread(target=bus.publish, args=(event(seq),)).start()
    assert [(await fast.next(1)).seq for _ in range(2)] == [1, 2]  # type: ignore[union-attr]
    for seq in range(3, 6):
        bus.publish(event(seq))
    # Deliveries run on the loop in publish order, each to every subscriber: once the fast
    # reader has 5, the slow one has been offered 3 to 5 as well.
    assert [(await fast.next(1)).seq for _ in range(3)] == [3, 4, 5]  # type: ignore[union-attr]
    assert slow.dropped and bus.dropped_total == 1 and bus.subscriber_count("r") == 1
    assert slow.queue.qsize() == 1  # only the marker is left
    assert other.queue.empty()
    bus.unsubscribe(fast)
    bus.unsubscribe(other)
    assert bus.subscriber_count() == 0


async def test_follow_merges_backlog_and_live_without_duplicates() -> None:
    bus = EventBus(queue_size=10)
    bus.bind(asyncio.get_running_loop())
    stored = [event(1), event(2), event(3)]

    async def load_after(after: int) -> tuple[list[RunEventPublic], bool]:
        # Events 2 and 3 are "committed" while the backlog is read: they arrive live too.
        if after == 0:
            bus.publish(event(2))
            bus.publish(event(3))
            await asyncio.sleep(0)
        return [e for e in stored if e.seq > after], False

    seen: list[int] = []
    backlog_read = asyncio.Event()

    async def consume() -> None:
        async for item in follow(bus, "r", load_after, idle_s=5):
            assert item is not None
            seen.append(item.seq)
            if item.seq == 3:
                backlog_read.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(backlog_read.wait(), 5)  # follow() is subscribed and live now
    bus.publish(event(5, "succeeded"))  # 4 was missed live: follow() resyncs from the store
    stored += [event(4), event(5, "succeeded")]
    await asyncio.wait_for(task, 5)
    assert seen == [1, 2, 3, 4, 5]
    assert bus.subscriber_count() == 0
