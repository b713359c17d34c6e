"""Serving benchmark runs through a real server, loading real OpenAI-protocol servers."""

from __future__ import annotations

import csv
import io
from typing import Any

import httpx
import pytest

from benchmark_api.app import SPEC
from core.api.app import create_base_app
from generator_api.app import create_app as create_generator
from tests.benchmark_api.conftest import events, results, run_to_end, submit, wait_for
from tests.benchmark_api.fake_openai import fake_openai_app, fake_openai_router
from tests.benchmark_api.test_engine_runs import assert_png, assert_svg
from tests.conftest import NANO_MODEL, SHIPPED_MODEL, engine_settings
from tests.support.server import LiveServer

LATENCIES = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")
PERCENTILES = ("mean", "p50", "p90", "p99")


def serving(base_url: str, **overrides: Any) -> dict[str, Any]:
    body = {
        "kind": "serving",
        "base_url": base_url,
        "model": "fake",
        "concurrency": [1, 4],
        "num_requests": 8,
        "prompt_bytes": 32,
        "max_tokens": 6,
    }
    return body | overrides


def assert_percentiles(stats: dict[str, Any], count: int) -> None:
    assert stats["count"] == count
    assert all(stats[p] is not None for p in PERCENTILES)
    assert 0 <= stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]
    assert stats["min"] <= stats["mean"] <= stats["max"]


@pytest.fixture(scope="module")
def two_levels(bench_server: LiveServer, fake_openai: LiveServer) -> dict[str, Any]:
    with httpx.Client(base_url=bench_server.url, timeout=30) as client:
        return run_to_end(client, serving(f"{fake_openai.url}/v1"))


def test_two_concurrency_levels_return_all_percentiles(two_levels: dict[str, Any]) -> None:
    result = two_levels["result"]
    levels = result["levels"]
    assert [level["concurrency"] for level in levels] == [1, 4]
    for level in levels:
        assert level["completed"] == 8 and level["errors"] == 0
        assert level["output_tokens"] == 8 * 6 and level["input_tokens"] == 8 * 32
        assert_percentiles(level["ttft_ms"], count=8)
        assert_percentiles(level["tpot_ms"], count=8)
        assert_percentiles(level["e2e_ms"], count=8)
        # One chunk per token: every request contributes max_tokens - 1 gaps.
        assert_percentiles(level["itl_ms"], count=8 * 5)
        assert level["e2e_ms"]["mean"] >= level["ttft_ms"]["mean"]
        assert level["request_throughput"] == pytest.approx(8 / level["duration_s"])
        assert level["output_tokens_per_s"] == pytest.approx(48 / level["duration_s"])
    summary = result["summary"]
    assert summary["complete"] and summary["completed"] == 16 and summary["errors"] == 0
    assert summary["best_output_tokens_per_s"] == max(lv["output_tokens_per_s"] for lv in levels)
    assert result["environment"]["torch_version"] and result["base_url"].endswith("/v1")


def test_metric_events_per_level(client: httpx.Client, two_levels: dict[str, Any]) -> None:
    metrics = [e["data"] for e in events(client, two_levels["run"]["id"]) if e["type"] == "metric"]
    ttft = sorted((m for m in metrics if m["name"] == "ttft_ms"), key=lambda m: m["step"])
    assert [m["step"] for m in ttft] == [0, 1]
    for metric, level in zip(ttft, two_levels["result"]["levels"], strict=True):
        assert metric["labels"]["concurrency"] == level["concurrency"]
        assert metric["percentiles"]["p99"] == pytest.approx(level["ttft_ms"]["p99"])


def test_serving_views(client: httpx.Client, two_levels: dict[str, Any]) -> None:
    run_id = two_levels["run"]["id"]
    assert_png(client.get(f"/api/benchmark/results/{run_id}/plot.png").content)
    assert_svg(client.get(f"/api/benchmark/results/{run_id}/plot.svg").content, "throughput")
    records = list(
        csv.DictReader(io.StringIO(client.get(f"/api/benchmark/results/{run_id}.csv").text))
    )
    assert [int(r["concurrency"]) for r in records] == [1, 4]
    for record, level in zip(records, two_levels["result"]["levels"], strict=True):
        for name in LATENCIES:
            assert float(record[f"{name}_p99"]) == pytest.approx(level[name]["p99"], rel=1e-5)


def test_compare_serving_runs(
    client: httpx.Client, two_levels: dict[str, Any], fake_openai: LiveServer
) -> None:
    other = run_to_end(client, serving(f"{fake_openai.url}/v1", concurrency=[4, 8]))
    a, b = two_levels["run"]["id"], other["run"]["id"]
    body = client.get("/api/benchmark/compare", params={"ids": f"{a},{b}"}).json()
    assert body["kind"] == "serving"
    matched = [row for row in body["rows"] if set(row["values"]) == {a, b}]
    assert [row["params"] for row in matched] == [{"concurrency": 4, "request_rate": None}]
    ratios = matched[0]["ratios"][b]
    values = matched[0]["values"]
    assert ratios["ttft_ms_p99"] == pytest.approx(
        values[b]["ttft_ms_p99"] / values[a]["ttft_ms_p99"]
    )
    mixed = client.get("/api/benchmark/compare", params={"ids": f"{a},{_engine_run(client)}"})
    assert mixed.status_code == 400 and mixed.json()["error"]["code"] == "incompatible_runs"


def _engine_run(client: httpx.Client) -> str:
    from tests.benchmark_api.conftest import TINY_ENGINE

    body = run_to_end(client, TINY_ENGINE)
    run_id: str = body["run"]["id"]
    return run_id


def test_poisson_rates_at_a_concurrency(client: httpx.Client, fake_openai: LiveServer) -> None:
    body = run_to_end(
        client,
        serving(f"{fake_openai.url}/v1", concurrency=[2], request_rate=[200, 1000], num_requests=6),
    )
    levels = body["result"]["levels"]
    assert [(lv["concurrency"], lv["request_rate"]) for lv in levels] == [(2, 200.0), (2, 1000.0)]
    assert all(lv["completed"] == 6 for lv in levels)


def test_rate_without_concurrency_limit(client: httpx.Client, fake_openai: LiveServer) -> None:
    body = run_to_end(
        client,
        serving(f"{fake_openai.url}/v1", concurrency=None, request_rate=500, num_requests=5),
    )
    (level,) = body["result"]["levels"]
    assert level["concurrency"] is None and level["request_rate"] == 500
    assert level["completed"] == 5


def test_without_streaming_ttft_is_the_whole_latency(
    client: httpx.Client, fake_openai: LiveServer
) -> None:
    body = run_to_end(client, serving(f"{fake_openai.url}/v1", stream=False, concurrency=[2]))
    (level,) = body["result"]["levels"]
    assert level["completed"] == 8 and level["output_tokens"] == 48
    assert level["ttft_ms"]["p50"] == pytest.approx(level["e2e_ms"]["p50"])
    assert level["itl_ms"]["count"] == 0 and level["tpot_ms"]["count"] == 0


def test_failed_requests_are_counted(client: httpx.Client, live_server: Any) -> None:
    flaky = live_server(fake_openai_app(fail_every=3))
    # The probe is request 1; the level's requests are 2..10, of which 3, 6 and 9 fail.
    body = run_to_end(client, serving(f"{flaky.url}/v1", concurrency=[3], num_requests=9))
    (level,) = body["result"]["levels"]
    assert level["errors"] == 3 and level["completed"] == 6
    assert any(
        "500" in sample and "synthetic failure" in sample for sample in level["error_samples"]
    )
    assert level["ttft_ms"]["count"] == 6


def test_unusable_endpoint_fails_the_run(client: httpx.Client, fake_openai: LiveServer) -> None:
    body = results(client, submit(client, serving(f"{fake_openai.url}/nowhere/v1")))
    assert body["run"]["status"] == "failed"
    assert body["run"]["error"]["code"] == "endpoint_error"
    assert "404" in body["run"]["error"]["message"]


def test_a_garbled_stream_fails_the_run_cleanly(client: httpx.Client, live_server: Any) -> None:
    garbled = live_server(fake_openai_app(garbled=True))
    body = results(client, submit(client, serving(f"{garbled.url}/v1")))
    assert body["run"]["status"] == "failed"
    assert body["run"]["error"]["code"] == "endpoint_error"
    assert "JSONDecodeError" in body["run"]["error"]["message"]


def test_url_outside_the_allow_list_is_400(client: httpx.Client) -> None:
    response = client.post("/api/benchmark/run", json=serving("http://example.com/v1"))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("url_not_allowed", "base_url")
    assert "example.com" in error["message"]


def test_cancel_mid_level(client: httpx.Client, live_server: Any) -> None:
    slow = live_server(fake_openai_app(token_delay_s=0.05))
    run_id = submit(
        client, serving(f"{slow.url}/v1", concurrency=[1], num_requests=50, max_tokens=10)
    )
    wait_for(client, run_id, lambda run: (run["message"] or "").startswith("level 1/1"))
    assert client.post(f"/api/benchmark/cancel/{run_id}").status_code == 200
    body = results(client, run_id)
    assert body["run"]["status"] == "cancelled"
    assert body["result"]["levels"] == [] and body["result"]["summary"]["complete"] is False


def test_default_base_url_is_this_server(
    sqlite_url: str, models_dir: Any, live_server: Any
) -> None:
    """Without base_url the run loads the /v1 of the server it was submitted to (here a
    protocol-only stand-in mounted beside the benchmark routes)."""
    settings = engine_settings(sqlite_url, models_dir)
    app = create_base_app(settings, components=[SPEC], routers=[fake_openai_router()])
    server = live_server(app)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        body = serving("", concurrency=[2], num_requests=4)
        body.pop("base_url")
        body.pop("model")
        submitted = client.post("/api/benchmark/run", json=body).json()
        result = run_to_end_of(client, submitted["id"])
    assert submitted["params"]["base_url"] == f"{server.url}/v1"
    assert submitted["model"] == settings.model.default == submitted["params"]["model"]
    assert result["base_url"] == f"{server.url}/v1"
    assert result["levels"][0]["completed"] == 4


def run_to_end_of(client: httpx.Client, run_id: str) -> dict[str, Any]:
    body = results(client, run_id)
    assert body["run"]["status"] == "succeeded", body["run"]
    result: dict[str, Any] = body["result"]
    return result


@pytest.mark.parametrize("model", [NANO_MODEL, SHIPPED_MODEL])
def test_serving_run_against_the_generator(
    client: httpx.Client, live_server: Any, sqlite_url: str, models_dir: Any, model: str
) -> None:
    generator = live_server(create_generator(engine_settings(sqlite_url, models_dir)))
    body = run_to_end(
        client,
        serving(
            f"{generator.url}/v1",
            model=model,
            concurrency=[1, 2],
            num_requests=4,
            prompt_bytes=16,
            max_tokens=8,
        ),
    )
    for level in body["result"]["levels"]:
        assert level["completed"] == 4 and level["errors"] == 0
        assert level["output_tokens"] == 4 * 8
        for name in ("ttft_ms", "e2e_ms", "tpot_ms"):
            assert_percentiles(level[name], count=4)


def test_a_serving_run_with_no_endpoint_anywhere_is_refused(client: httpx.Client) -> None:
    """The benchmark server alone serves no /v1 and knows no generator: 422, no run."""
    before = client.get("/api/benchmark/runs", params={"kind": "serving"}).json()["count"]
    body = serving("", concurrency=[1], num_requests=1)
    body.pop("base_url")
    response = client.post("/api/benchmark/run", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "no_openai_endpoint"
    assert client.get("/api/benchmark/runs", params={"kind": "serving"}).json()["count"] == before
