"""Helpers for driving generator runs over HTTP in tests."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.support.poll import poll_until

TERMINAL = {"succeeded", "failed", "cancelled"}


def wait_for_run(http: httpx.Client, run_id: str, timeout: float = 60.0) -> dict[str, Any]:
    run: dict[str, Any] = poll_until(
        lambda: http.get(f"/api/generator/status/{run_id}").json(),
        lambda run: run["status"] in TERMINAL,
        timeout=timeout,
        interval=0.05,
        what=f"run {run_id} to finish",
    )
    return run


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
