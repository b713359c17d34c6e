"""Fixtures for the Generator tests: one real server (bdh-nano) shared by the package.

Its limits are small on purpose, so the limit checks can be exercised cheaply:
prompts up to 512 bytes, up to 20000 new tokens (long enough to keep a slot busy), n ≤ 4.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch

from generator_api.app import create_app
from tests.conftest import engine_settings
from tests.support.poll import poll_until
from tests.support.server import LiveServer, serve

MODEL = "bdh-nano"
LIMITS = {
    "generation.max_prompt_bytes": 512,
    "generation.max_tokens_limit": 20_000,
    "generation.max_n": 4,
    "generation.max_batch": 8,
}


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Small models: one torch thread avoids spin-waiting on cores that other work holds
    (tens of ms instead of seconds per request under load). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[LiveServer]:
    url = f"sqlite:///{tmp_path_factory.mktemp('generator') / 'hatchery.db'}"
    with serve(create_app(engine_settings(url, models_dir, **LIMITS))) as live:
        wait_ready(live.url)
        yield live


def wait_ready(url: str, timeout: float = 30.0) -> None:
    """Wait for /ready (the preloaded model is loaded in the background)."""
    poll_until(
        lambda: httpx.get(f"{url}/ready").status_code,
        lambda status: status == 200,
        timeout=timeout,
        interval=0.05,
        what="/ready",
    )


@pytest.fixture
def client(server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0) as sdk:
        yield sdk


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def wait_until(condition: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    return poll_until(condition, timeout=timeout, what=what or str(condition))


def engine_totals(live: LiveServer) -> dict[str, Any]:
    totals: dict[str, Any] = live.app.state.engine.stats()["totals"]
    return totals
