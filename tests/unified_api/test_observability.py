"""/metrics, /info, /stats and /ready against real servers."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from core.engine import ModelRegistry
from tests.conftest import build_nano_model, make_settings
from tests.support.poll import poll_until
from tests.support.sample_component import create_app as create_sample_app
from tests.support.server import LiveServer
from tests.unified_api.helpers import nano_settings, wait_ready
from unified_api.app import create_app

LiveServerFactory = Callable[[FastAPI], LiveServer]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page: (name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(page: dict, name: str, **labels: str) -> float:
    return page.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for_status(client: httpx.Client, path: str, status: str) -> None:
    poll_until(
        lambda: client.get(path).json(),
        lambda run: run["status"] == status,
        timeout=20,
        what=f"{path} to become {status}",
    )


def test_http_and_run_metrics_by_route_template(
    store_url: str, live_server: LiveServerFactory
) -> None:
    server = live_server(create_sample_app(make_settings(store_url)))
    with httpx.Client(base_url=server.url) as client:
        ok = client.post("/api/sample/run", json={"kind": "chatty", "events": 1}).json()
        failing = client.post("/api/sample/run", json={"kind": "fail"}).json()
        wait_for_status(client, f"/api/sample/status/{ok['id']}", "succeeded")
        wait_for_status(client, f"/api/sample/status/{failing['id']}", "failed")
        assert client.get("/api/sample/status/unknown").status_code == 404
        assert client.get("/no/such/path").status_code == 404
        assert client.delete("/health").status_code == 405
        page = samples(client.get("/metrics").text)
        stats = client.get("/stats").json()

    requests = "hatchery_http_requests_total"
    template = "/api/sample/status/{run_id}"
    assert value(page, requests, method="POST", route="/api/sample/run", status="202") == 2
    assert value(page, requests, method="GET", route=template, status="200") >= 2
    assert value(page, requests, method="GET", route=template, status="404") == 1
    assert value(page, requests, method="GET", route="<unmatched>", status="404") == 1
    assert value(page, requests, method="DELETE", route="/health", status="405") == 1
    assert not [key for key in page if "unknown" in str(key) or "/no/such" in str(key)]
    duration = "hatchery_http_request_duration_seconds_count"
    assert value(page, duration, method="POST", route="/api/sample/run") == 2
    assert value(page, "hatchery_runs", component="sample", status="succeeded") == 1
    assert value(page, "hatchery_runs", component="sample", status="failed") == 1
    assert value(page, "hatchery_store_up") == 1
    assert stats["runs"] == {"sample": {"succeeded": 1, "failed": 1}}
    assert stats["engine"] is None
    assert stats["process"]["memory_rss_bytes"] > 0 and stats["process"]["threads"] >= 1


def test_generation_metrics_after_a_completion(
    tmp_path: Path, models_dir: Path, live_server: LiveServerFactory
) -> None:
    server = live_server(create_app(nano_settings(tmp_path, models_dir)))
    with httpx.Client(base_url=server.url, timeout=60) as client:
        wait_ready(client)
        before = samples(client.get("/metrics").text)
        ttft_count = "hatchery_time_to_first_token_seconds_count"
        assert value(before, ttft_count, model_name="bdh-nano") == 0  # made as the model loads
        completion = client.post(
            "/v1/completions",
            json={"model": "bdh-nano", "prompt": "Hello", "max_tokens": 6, "temperature": 0},
        )
        assert completion.status_code == 200, completion.text
        usage = completion.json()["usage"]
        page = samples(client.get("/metrics").text)
        stats = client.get("/stats").json()
        info = client.get("/info").json()

    nano_label = {"model_name": "bdh-nano"}
    assert value(page, "hatchery_time_to_first_token_seconds_count", **nano_label) == 1
    assert value(page, "hatchery_e2e_request_latency_seconds_count", **nano_label) == 1
    # One inter-token gap per token after the first.
    itl = value(page, "hatchery_inter_token_latency_seconds_count", **nano_label)
    assert itl == usage["completion_tokens"] - 1
    assert value(page, "hatchery_prompt_tokens_total", **nano_label) == usage["prompt_tokens"]
    generated = value(page, "hatchery_generation_tokens_total", **nano_label)
    assert generated == usage["completion_tokens"]
    finished = "hatchery_requests_finished_total"
    assert value(page, finished, finished_reason="length", **nano_label) == 1
    assert value(page, "hatchery_engine_running", **nano_label) == 0
    assert value(page, "hatchery_engine_running_sequences", **nano_label) == 0
    assert value(page, "hatchery_engine_waiting", **nano_label) == 0
    assert value(page, "hatchery_engine_ready") == 1
    completions = value(
        page, "hatchery_http_requests_total", method="POST", route="/v1/completions", status="200"
    )
    assert completions == 1
    nano = stats["engine"]["models"]["bdh-nano"]
    assert nano["total_requests"] == 1 and nano["tokens_generated"] == usage["completion_tokens"]
    assert stats["engine"]["ready"] is True
    assert info["features"]["openai"] is True and info["default_model"] == "bdh-nano"


def test_running_counts_requests_and_aborted_tokens_are_counted(
    tmp_path: Path, models_dir: Path, live_server: LiveServerFactory
) -> None:
    # Far more tokens than the nano model makes before the client hangs up below.
    limits = {"generation.max_tokens_limit": 1_000_000}
    server = live_server(create_app(nano_settings(tmp_path, models_dir, **limits)))
    nano = {"model_name": "bdh-nano"}
    body = {"model": "bdh-nano", "prompt": "Hi", "max_tokens": 1_000_000, "n": 2, "stream": True}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        wait_ready(client)
        with client.stream("POST", "/v1/completions", json=body) as stream:
            lines = stream.iter_lines()
            while "text" not in next(lines):  # the choices are being generated
                pass
            page = poll_until(
                lambda: samples(client.get("/metrics").text),
                lambda page: value(page, "hatchery_engine_running_sequences", **nano) >= 2,
                timeout=20,
                what="the two choices to reach decoding (prefill done)",
            )
            assert value(page, "hatchery_engine_running_sequences", **nano) == 2  # two choices...
            assert value(page, "hatchery_engine_running", **nano) == 1  # ...of one request
        # Leaving the stream disconnects the client, which aborts both choices.
        finished = "hatchery_requests_finished_total"
        page = poll_until(
            lambda: samples(client.get("/metrics").text),
            lambda page: value(page, finished, finished_reason="abort", **nano) >= 2,
            timeout=20,
            interval=0.05,
            what="the aborted choices to be counted",
        )
        generated = client.get("/stats").json()["engine"]["models"]["bdh-nano"]["tokens_generated"]
    assert generated > 0
    assert value(page, "hatchery_generation_tokens_total", **nano) == generated
    assert value(page, "hatchery_e2e_request_latency_seconds_count", **nano) == 0  # not normal


def test_ready_is_503_until_the_preloaded_model_is_loaded(
    tmp_path: Path, models_dir: Path, live_server: LiveServerFactory
) -> None:
    own_models = tmp_path / "models"
    shutil.copytree(models_dir / "bdh-nano", own_models / "bdh-nano")
    settings = nano_settings(tmp_path, own_models, **{"model.preload": ["late-model"]})
    app = create_app(settings)
    server = live_server(app)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        not_ready = client.get("/ready")
        assert not_ready.status_code == 503
        assert not_ready.json()["error"]["code"] == "not_ready"
        assert client.get("/health").status_code == 200
        page = samples(client.get("/metrics").text)
        assert value(page, "hatchery_engine_ready") == 0

        ModelRegistry(own_models).register("late-model", build_nano_model(seed=1), {})
        app.state.engine.scheduler("late-model")  # what a first request would do
        assert client.get("/ready").json() == {"status": "ready", "store": True, "engine": True}
        info = client.get("/info").json()
        assert {m["name"]: m["loaded"] for m in info["models"]} == {
            "bdh-nano": False,
            "late-model": True,
        }
