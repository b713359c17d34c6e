"""Helpers for driving generator runs over HTTP in tests."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

TERMINAL = {"succeeded", "failed", "cancelled"}


def wait_for_run(http: httpx.Client, run_id: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run: dict[str, Any] = http.get(f"/api/generator/status/{run_id}").json()
        if run["status"] in TERMINAL:
            return run
        assert time.monotonic() < deadline, f"run never finished: {run}"
        time.sleep(0.05)


def run_events(http: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    """Every stored event of a finished run, through the SSE route (which then ends)."""
    events = []
    with http.stream("GET", f"/api/generator/events/{run_id}") as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), "events must be contiguous"
    return events
