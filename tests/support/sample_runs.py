"""Driving runs of the sample component over HTTP and WebSocket, for the executor tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
from websockets.sync.client import connect

from tests.support.poll import poll_until
from tests.support.server import LiveServer

TERMINAL = {"succeeded", "failed", "cancelled"}
IDLE_S = 120.0  # a follower's idle re-read in these tests: far beyond every wait


def wait_until(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    return poll_until(check, timeout=timeout, interval=0.05, what=what)


def submit(client: httpx.Client, body: dict[str, Any]) -> str:
    response = client.post("/api/sample/run", json=body)
    assert response.status_code == 202, response.text
    run_id: str = response.json()["id"]
    return run_id


def status(client: httpx.Client, run_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = client.get(f"/api/sample/status/{run_id}").json()
    return answer


def finished(client: httpx.Client, run_id: str, timeout: float = 90) -> dict[str, Any]:
    return poll_until(
        lambda: status(client, run_id),
        lambda run: run["status"] in TERMINAL,
        timeout=timeout,
        interval=0.05,
        what=f"run {run_id} to finish",
    )


def stored_events(client: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    """Every event of a finished run, through the SSE route (a replay, then the stream ends)."""
    events = []
    with client.stream("GET", f"/api/sample/events/{run_id}") as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(httpx.Response(200, content=line[6:]).json())
    seqs = [event["seq"] for event in events]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    return events


def follow_ws(server: LiveServer, run_id: str) -> list[dict[str, Any]]:
    events = []
    with connect(f"{server.ws_url}/api/sample/ws/{run_id}", open_timeout=10) as socket:
        while True:
            event = json.loads(socket.recv(timeout=20))
            if "seq" not in event:
                continue
            events.append(event)
            if event["type"] == "status" and event["data"]["status"] in (
                "succeeded",
                "failed",
                "cancelled",
            ):
                return events
