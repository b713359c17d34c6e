"""Runs started over HTTP for the browser tests, and small page helpers."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.poll import poll_until

TERMINAL = {"succeeded", "failed", "cancelled"}
# A benchmark small enough for a loaded CI machine: one row, one repeat.
TINY_ENGINE_BENCH: dict[str, Any] = {
    "kind": "engine",
    "batch_sizes": [1],
    "context_lengths": [16],
    "new_tokens": [4],
    "modes": ["recurrent"],
    "repeats": 1,
    "warmup": 0,
    "bandwidth_mb": 4,
}


def start(client: httpx.Client, component: str, body: dict[str, Any]) -> str:
    answer = client.post(f"/api/{component}/run", json=body)
    assert answer.status_code == 202, answer.text
    run_id: str = answer.json()["id"]
    return run_id


def finished(client: httpx.Client, component: str, run_id: str) -> dict[str, Any]:
    run: dict[str, Any] = poll_until(
        lambda: client.get(f"/api/{component}/status/{run_id}").json(),
        lambda run: run["status"] in TERMINAL,
        timeout=240,
        interval=0.1,
        what=f"{component} run {run_id} to finish",
    )
    return run


def succeeded_benchmark(client: httpx.Client, **overrides: Any) -> str:
    run_id = start(client, "benchmark", TINY_ENGINE_BENCH | overrides)
    run = finished(client, "benchmark", run_id)
    assert run["status"] == "succeeded", run
    return run_id


PLOT_LOADED = """() => {
  const image = document.querySelector("img.plot");
  return image !== null && image.complete && image.naturalWidth > 0;
}"""
