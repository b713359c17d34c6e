"""Driving test runs over HTTP and following their events, against a real server."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from websockets.sync.client import connect

from tests.support.poll import poll_until

TERMINAL = {"succeeded", "failed", "cancelled"}


def submit(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/api/test/run", json=body)
    assert response.status_code == 202, response.text
    run: dict[str, Any] = response.json()
    return run


def wait_finished(client: httpx.Client, run_id: str, timeout: float = 120) -> dict[str, Any]:
    run: dict[str, Any] = poll_until(
        lambda: client.get(f"/api/test/status/{run_id}").json(),
        lambda run: run["status"] in TERMINAL,
        timeout=timeout,
        interval=0.05,
        what=f"run {run_id} to finish",
    )
    return run


def run_suite(
    client: httpx.Client, body: dict[str, Any], timeout: float = 120
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Submit, wait, and return (run, report)."""
    run = submit(client, body)
    wait_finished(client, run["id"], timeout)
    results = client.get(f"/api/test/results/{run['id']}")
    assert results.status_code == 200, results.text
    data = results.json()
    return data["run"], data["result"]


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {case["name"]: case["status"] for case in report["cases"]}


def assert_clean(report: dict[str, Any] | None) -> dict[str, Any]:
    """A report with no failed and no errored case (details of any that are)."""
    assert report is not None
    bad = [c for c in report["cases"] if c["status"] in ("failed", "errored")]
    assert not bad, json.dumps(bad, indent=1)[:3000]
    assert report["failed"] == report["errored"] == 0
    assert report["passed"] + report["skipped"] == len(report["cases"])
    return report


def ws_events(ws_url: str, run_id: str, timeout: float = 120) -> list[dict[str, Any]]:
    """Every event of the run over the WebSocket, until the server closes it."""
    events = []
    with connect(f"{ws_url}/api/test/ws/{run_id}", open_timeout=10) as ws:
        deadline = time.monotonic() + timeout
        for message in ws:
            event = json.loads(message)
            if "seq" in event:
                events.append(event)
            assert time.monotonic() < deadline
    return events


def error_code(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    code: str = body["error"]["code"]
    return code
