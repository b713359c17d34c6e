"""Slots and queues: disconnecting clients free their slots; a full queue answers 503."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from generator_api.app import create_app
from tests.conftest import engine_settings
from tests.support.server import LiveServer, serve

from .conftest import MODEL, engine_totals, wait_ready, wait_until

LONG = {"model": MODEL, "prompt": "Keep going", "max_tokens": 20_000, "temperature": 1.0}


def test_a_disconnecting_stream_frees_its_slot(server: LiveServer) -> None:
    before = server.app.state.engine.stats()["models"][MODEL]["aborted_requests"]
    with (
        httpx.Client(base_url=server.url, timeout=30) as http,
        http.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert next(lines) == ""
        assert next(lines).startswith("data: ")  # still generating
        # Counts are published at the end of a step, possibly just after the tokens arrive.
        wait_until(lambda: engine_totals(server)["running"] >= 1, what="a running sequence")
        assert server.app.state.engine.stats()["models"][MODEL]["aborted_requests"] == before
    # The client is gone: the engine aborts the request and frees its slot within a step.
    wait_until(lambda: engine_totals(server)["running"] == 0, what="the slot to be freed")
    stats = server.app.state.engine.stats()["models"][MODEL]
    assert stats["aborted_requests"] == before + 1 and stats["waiting"] == 0


def test_a_disconnecting_non_streaming_client_frees_its_slot(server: LiveServer) -> None:
    before = server.app.state.engine.stats()["models"][MODEL]["aborted_requests"]
    with httpx.Client(base_url=server.url, timeout=0.5) as http, pytest.raises(httpx.ReadTimeout):
        http.post("/v1/completions", json=LONG)
    wait_until(lambda: engine_totals(server)["running"] == 0, what="the slot to be freed")
    after = server.app.state.engine.stats()["models"][MODEL]["aborted_requests"]
    assert after == before + 1


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[LiveServer]:
    url = f"sqlite:///{tmp_path_factory.mktemp('tiny') / 'hatchery.db'}"
    settings = engine_settings(
        url,
        models_dir,
        **{
            "generation.max_batch": 1,
            "generation.max_waiting": 1,
            "generation.max_tokens_limit": 20_000,
        },
    )
    with serve(create_app(settings)) as live:
        wait_ready(live.url)
        yield live


def test_a_full_queue_answers_503_with_retry_after(tiny_server: LiveServer) -> None:
    with httpx.Client(base_url=tiny_server.url, timeout=30) as http:
        with http.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as running:
            # Keep the iterator: dropping it mid-stream makes httpx close the connection.
            lines = running.iter_lines()
            next(lines)  # generating: the one slot is taken
            # Response headers mean the request was validated and queued.
            with http.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as queued:
                assert queued.status_code == 200
                assert engine_totals(tiny_server)["waiting"] == 1
                refused = http.post("/v1/completions", json={**LONG, "stream": True})
                chat = http.post(
                    "/v1/chat/completions",
                    json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
                )
        for response in (refused, chat):
            assert response.status_code == 503, response.text
            assert int(response.headers["Retry-After"]) >= 1
            assert response.json()["error"]["code"] == "overloaded"
        wait_until(lambda: engine_totals(tiny_server)["running"] == 0, what="slots to be freed")
        wait_until(lambda: engine_totals(tiny_server)["waiting"] == 0, what="the queue to drain")
        assert lines is not None
        ok = http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2})
        assert ok.status_code == 200
        # More prompts than the queue could ever hold is the request's fault, not a busy server.
        many = http.post("/v1/completions", json={"model": MODEL, "prompt": ["a", "b"]})
        assert many.status_code == 400 and many.json()["error"]["param"] == "prompt"
