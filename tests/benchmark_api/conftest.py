"""Benchmark tests: one real server with the test engine (bdh-nano) for the whole session."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import torch

from benchmark_api.app import create_app
from tests.benchmark_api.fake_openai import fake_openai_app
from tests.conftest import engine_settings
from tests.support.poll import poll_until
from tests.support.server import LiveServer, serve

TERMINAL = {"succeeded", "failed", "cancelled"}

# Tiny engine sweeps: the figures only need to be real, not precise.
TINY_ENGINE: dict[str, Any] = {
    "kind": "engine",
    "model": "bdh-nano",
    "batch_sizes": [1],
    "context_lengths": [16],
    "new_tokens": 4,
    "modes": ["recurrent"],
    "repeats": 1,
    "warmup": 0,
    "bandwidth_mb": 4,
}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Measure with one intra-op thread, restored afterwards.

    Where the cores are shared with other work, every small op of a multi-threaded step waits
    for a descheduled peer, and decode steps get far slower and noisy.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def bench_server(models_dir: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    url = f"sqlite:///{tmp_path_factory.mktemp('bench') / 'hatchery.db'}"
    with serve(create_app(engine_settings(url, models_dir))) as live:
        yield live


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[LiveServer]:
    """An OpenAI-compatible streaming endpoint (protocol only) on its own port."""
    with serve(fake_openai_app(token_delay_s=0.001)) as live:
        yield live


@pytest.fixture
def client(bench_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=bench_server.url, timeout=30) as client:
        yield client


def submit(client: httpx.Client, body: dict[str, Any]) -> str:
    response = client.post("/api/benchmark/run", json=body)
    assert response.status_code == 202, response.text
    run_id: str = response.json()["id"]
    return run_id


def wait_for(
    client: httpx.Client,
    run_id: str,
    done: Callable[[dict[str, Any]], bool] = lambda run: run["status"] in TERMINAL,
    timeout: float = 120,
) -> dict[str, Any]:
    run: dict[str, Any] = poll_until(
        lambda: client.get(f"/api/benchmark/status/{run_id}").json(),
        done,
        timeout=timeout,
        interval=0.05,
        what=f"run {run_id}",
    )
    return run


def results(client: httpx.Client, run_id: str) -> dict[str, Any]:
    """Wait for the run to end; its `{run, result}`."""
    wait_for(client, run_id)
    response = client.get(f"/api/benchmark/results/{run_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def run_to_end(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """Submit, wait, and return `{run, result}` of a run that must succeed."""
    body = results(client, submit(client, body))
    assert body["run"]["status"] == "succeeded", body["run"]
    return body


def events(client: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    """Every stored event of a finished run, read from the SSE route."""
    found = []
    with client.stream("GET", f"/api/benchmark/events/{run_id}") as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:"):
                found.append(json.loads(line[5:]))
    return found
