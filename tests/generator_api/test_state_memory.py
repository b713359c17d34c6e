"""Memory-aware admission on a real server: a state budget of two bdh-nano sequences runs two
streams and queues the third; /stats and /metrics tell the memory and the free slots."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.engine.state_memory import state_bytes
from core.engine.training import TEMPLATES
from generator_api.app import create_app
from tests.conftest import engine_settings
from tests.support.server import LiveServer, serve

from .conftest import MODEL, wait_ready, wait_until

PER_SEQUENCE = state_bytes(TEMPLATES[MODEL].config)
ENDLESS = {"model": MODEL, "prompt": "Keep going", "max_tokens": 20_000, "stream": True}


def start(tmp_path: Path, models_dir: Path, budget: int) -> Any:
    settings = engine_settings(
        f"sqlite:///{tmp_path / 'hatchery.db'}",
        models_dir,
        **{
            "generation.max_state_memory": budget,
            "generation.max_waiting": 1,
            "generation.max_tokens_limit": 20_000,
        },
    )
    return serve(create_app(settings))


@pytest.fixture
def small(tmp_path: Path, models_dir: Path) -> Iterator[LiveServer]:
    # Two decode slots and the one prefill state a lane needs besides them.
    with start(tmp_path, models_dir, 3 * PER_SEQUENCE) as live:
        wait_ready(live.url)
        yield live


def model_stats(http: httpx.Client) -> dict[str, Any]:
    stats: dict[str, Any] = http.get("/stats").json()["engine"]["models"][MODEL]
    return stats


def gauge(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(f'{name}{{model_name="'))
    return float(line.rsplit(" ", 1)[1])


def test_two_sequences_run_the_third_waits_then_runs(small: LiveServer) -> None:
    with httpx.Client(base_url=small.url, timeout=30) as http:
        assert model_stats(http)["free_slots"] == 2
        with (
            http.stream("POST", "/v1/completions", json=ENDLESS) as first,
            http.stream("POST", "/v1/completions", json=ENDLESS) as second,
        ):
            first_lines, second_lines = first.iter_lines(), second.iter_lines()
            assert next(first_lines).startswith("data: ")
            assert next(second_lines).startswith("data: ")
            short = {"model": MODEL, "prompt": "Third", "max_tokens": 8, "stream": True}
            with http.stream("POST", "/v1/completions", json=short) as third:
                assert third.status_code == 200  # validated and queued
                wait_until(lambda: model_stats(http)["waiting"] == 1, what="a waiting request")
                stats = model_stats(http)
                assert (stats["running"], stats["waiting"], stats["free_slots"]) == (2, 1, 0)
                assert stats["max_sequences"] == 2
                assert stats["state_bytes_per_sequence"] == PER_SEQUENCE
                assert stats["max_state_memory"] == 3 * PER_SEQUENCE
                assert stats["state_memory_in_use"] == 2 * PER_SEQUENCE
                # Two slots allocated whole and the lane's kept prefill buffer (the
                # prompts' last chunks kept their queries there): within the budget.
                assert stats["state_memory_allocated"] == 3 * PER_SEQUENCE
                metrics = http.get("/metrics").text
                assert gauge(metrics, "hatchery_engine_free_slots") == 0
                assert gauge(metrics, "hatchery_engine_state_memory_bytes") == 2 * PER_SEQUENCE
                limit = gauge(metrics, "hatchery_engine_state_memory_limit_bytes")
                assert limit == 3 * PER_SEQUENCE
                # The queue (max_waiting 1) is full: a busy server, never an out-of-memory.
                refused = http.post("/v1/completions", json={**short, "stream": False})
                assert refused.status_code == 503, refused.text
                assert refused.json()["error"]["code"] == "overloaded"
                assert int(refused.headers["Retry-After"]) >= 1
                first.close()  # the client leaves: its slot goes to the waiting request
                body = "\n".join(third.iter_lines())
        assert '"finish_reason":"length"' in body.replace(" ", "")
        assert body.rstrip().endswith("data: [DONE]")
        wait_until(lambda: model_stats(http)["free_slots"] == 2, what="every slot to be free")
        stats = model_stats(http)
        assert stats["state_memory_in_use"] == 0 and stats["waiting"] == 0


def test_a_budget_below_one_sequence_answers_503(tmp_path: Path, models_dir: Path) -> None:
    with (
        start(tmp_path, models_dir, PER_SEQUENCE) as live,
        httpx.Client(base_url=live.url, timeout=30) as http,
    ):
        # The preload fails (logged); the model never becomes ready.
        wait_until(lambda: http.get("/ready").status_code == 503, what="/ready to answer")
        response = http.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "state_memory_too_small"
        assert "generation.max_state_memory" in error["message"]
        assert "Retry-After" not in response.headers  # waiting will not help
