"""The Test component through a real server: submission, each suite on bdh-nano, broken
models, live case events, cancel, timeout and run failures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from core.api.app import no_engine
from core.engine import ModelRegistry, SamplingParams
from test_api.app import create_app
from tests.support.poll import poll_until
from tests.support.server import LiveServer, serve
from tests.test_api.conftest import component_settings
from tests.test_api.helpers import (
    assert_clean,
    error_code,
    run_suite,
    statuses,
    submit,
    wait_finished,
    ws_events,
)

NANO = "bdh-nano"


def test_suites_catalogue(client: httpx.Client) -> None:
    response = client.get("/api/test/suites")
    assert response.status_code == 200
    body = response.json()
    kinds = [suite["kind"] for suite in body["data"]]
    assert kinds == ["smoke", "consistency", "quality", "prompts", "endpoint"]
    assert body["count"] == 5
    smoke = body["data"][0]
    options = {option["name"]: option for option in smoke["options"]}
    assert {"model", "device", "dtype", "timeout_s", "prompt", "max_tokens"} <= set(options)
    assert options["prompt"]["default"] == "The " and not options["prompt"]["required"]
    assert "serving_path" in smoke["cases"]
    prompts = {s["kind"]: s for s in body["data"]}["prompts"]
    cases = {option["name"]: option for option in prompts["options"]}["cases"]
    assert cases["required"] and "$defs" in cases["json_schema"]
    operations = client.get("/openapi.json").json()["paths"]["/api/test/suites"]
    assert operations["get"]["operationId"] == "test_suites"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"kind": "fuzz"}, "kind"),
        ({"kind": "smoke", "model": "../etc"}, "model"),
        ({"kind": "smoke", "device": "tpu"}, "device"),
        ({"kind": "smoke", "surprise": 1}, "surprise"),
        ({"kind": "consistency", "lengths": []}, "lengths"),
        ({"kind": "prompts", "cases": [{"name": "x", "prompt": "a", "expect": {}}]}, None),
        (
            {"kind": "prompts", "cases": [{"name": "x", "prompt": "a", "expect": {"regex": "("}}]},
            None,
        ),
        (
            {
                "kind": "prompts",
                "cases": [{"name": "x", "prompt": "a", "expect": {"contains": "a"}}] * 2,
            },
            "cases",
        ),
    ],
)
def test_bad_requests_are_refused(
    client: httpx.Client, body: dict[str, Any], param: str | None
) -> None:
    response = client.post("/api/test/run", json=body)
    assert error_code(response, 422) == "invalid_request"
    if param is not None:
        assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/v1",
        "http://10.0.0.1:8000/v1",
        "http://127.0.0.1.nip.io/v1",
        "ftp://127.0.0.1/v1",
        "http://127.0.0.1:99999/v1",
        "not a url",
    ],
)
def test_endpoint_url_outside_the_allow_list_is_400(client: httpx.Client, url: str) -> None:
    before = client.get("/api/test/runs", params={"kind": "endpoint"}).json()["count"]
    response = client.post("/api/test/run", json={"kind": "endpoint", "base_url": url})
    assert error_code(response, 400) == "url_not_allowed"
    assert response.json()["error"]["param"] == "base_url"
    assert client.get("/api/test/runs", params={"kind": "endpoint"}).json()["count"] == before


def test_defaults_are_filled_in_at_submission(client: httpx.Client, server: LiveServer) -> None:
    run = submit(client, {"kind": "smoke", "max_tokens": 4})
    assert run["model"] == NANO and run["params"]["model"] == NANO
    endpoint = submit(client, {"kind": "endpoint", "base_url": f"{server.url}/v1"})
    assert endpoint["params"]["base_url"] == f"{server.url}/v1"
    # This server serves no /v1 and knows no generator: refused, never a run of 404s.
    refused = client.post("/api/test/run", json={"kind": "endpoint", "request_timeout_s": 5})
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "no_openai_endpoint"
    assert run["params"]["serving_url"] is None  # smoke's serving case: this server's engine
    for started in (run, endpoint):  # only the submission matters here
        client.post(f"/api/test/cancel/{started['id']}")
        assert wait_finished(client, started["id"])["status"] in ("cancelled", "succeeded")


def test_smoke_on_nano_with_live_case_events(client: httpx.Client, server: LiveServer) -> None:
    run = submit(client, {"kind": "smoke", "model": NANO, "max_tokens": 8})
    events = ws_events(server.ws_url, run["id"])
    results = client.get(f"/api/test/results/{run['id']}").json()
    report = assert_clean(results["result"])
    assert results["run"]["status"] == "succeeded" and results["run"]["progress"] == 1.0
    assert report["suite"] == "smoke" and report["model"] == NANO and report["skipped"] == 0
    assert report["passed"] == 8 and report["target"]["dtype"] == "float32"
    cases = [e["data"] for e in events if e["type"] == "case"]
    assert cases == report["cases"]  # every case went out live, exactly as reported
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "status" and events[-1]["data"]["status"] == "succeeded"
    summary = next(e for e in events if e["type"] == "result")["data"]["summary"]
    assert summary["passed"] == 8 and "cases" not in summary
    greedy = statuses(report)
    assert greedy["serving_path"] == "passed"  # the scheduler matched the model token for token


def test_consistency_on_nano_over_sse(client: httpx.Client) -> None:
    body = {"kind": "consistency", "model": NANO, "lengths": [1, 9, 40], "chunk_size": 8}
    run = submit(client, body)
    with client.stream("GET", f"/api/test/events/{run['id']}") as response:
        lines = [line for line in response.iter_lines() if line.startswith("data:")]
    events = [json.loads(line[5:]) for line in lines]
    report = assert_clean(client.get(f"/api/test/results/{run['id']}").json()["result"])
    names = [case["name"] for case in report["cases"]]
    assert names[:3] == [f"recurrent_vs_parallel[T={n}]" for n in (1, 9, 40)]
    assert statuses(report)["float32_vs_bfloat16"] == "passed"  # CPU computes bfloat16
    assert [e["data"]["name"] for e in events if e["type"] == "case"] == names
    seeded = next(c for c in report["cases"] if c["name"] == "seed_reproduces")
    assert seeded["details"]["served"]["same_tokens"] is True
    assert report["target"]["atol"] == 1e-4


def test_quality_on_a_good_model_uses_its_recorded_split(client: httpx.Client) -> None:
    run, report = run_suite(client, {"kind": "quality", "model": "nano-bigram", "samples": 2})
    report = assert_clean(report)
    assert run["status"] == "succeeded" and report["skipped"] == 0
    details = {c["name"]: c["details"] for c in report["cases"]}
    measured = details["bits_per_byte"]
    assert measured["source"].startswith("corpus 'tiny.txt' bytes ")
    assert measured["block_size"] == 64 and measured["bytes"] > 2000
    assert measured["bits_per_byte"] < measured["unigram_bits_per_byte"]
    recorded = measured["recorded_val_bits_per_byte"]
    assert abs(measured["bits_per_byte"] - recorded) < 0.05 * recorded  # the same figure
    assert details["sample_valid_utf8"]["valid_fraction"] == 1.0


def test_quality_failures_are_failed_cases_in_a_succeeded_run(client: httpx.Client) -> None:
    text = "It was the best of times, it was the worst of times. " * 20
    body = {"kind": "quality", "model": NANO, "text": text, "max_bits_per_byte": 12}
    run, report = run_suite(client, body)
    assert run["status"] == "succeeded" and run["error"] is None
    assert report is not None
    got = statuses(report)
    assert got["bits_per_byte"] == got["bits_per_byte_threshold"] == "passed"
    assert got["beats_unigram_baseline"] == "failed"  # random weights: ~8 bits per byte
    assert got["sample_valid_utf8"] == "failed"  # random bytes are mostly not UTF-8
    assert report["failed"] == 2


def test_a_noisy_model_misses_its_recorded_threshold(client: httpx.Client) -> None:
    run, report = run_suite(client, {"kind": "quality", "model": "nano-noisy", "samples": 0})
    assert run["status"] == "succeeded" and report is not None
    assert statuses(report)["bits_per_byte_threshold"] == "failed"
    case = next(c for c in report["cases"] if c["name"] == "bits_per_byte_threshold")
    assert case["details"]["bits_per_byte"] > case["details"]["threshold"]


def test_a_nan_checkpoint_fails_smoke_and_consistency_cases(client: httpx.Client) -> None:
    _, smoke = run_suite(client, {"kind": "smoke", "model": "nano-nan", "max_tokens": 4})
    assert smoke is not None
    got = statuses(smoke)
    assert got["loads"] == got["parameter_shapes"] == "passed"
    assert got["weights_finite"] == got["forward_finite"] == "failed"
    run, consistency = run_suite(
        client, {"kind": "consistency", "model": "nano-nan", "lengths": [4, 16]}
    )
    assert run["status"] == "succeeded" and consistency is not None
    got = statuses(consistency)
    assert got["recurrent_vs_parallel[T=4]"] == got["recurrent_vs_parallel[T=16]"] == "failed"
    case = consistency["cases"][0]
    assert case["details"]["finite"] is False and case["details"]["max_abs_diff"] == "nan"


def test_prompts_pass_and_fail_on_their_expectations(
    client: httpx.Client, component_models: Path
) -> None:
    lm = ModelRegistry(component_models).load("nano-bigram")
    greedy = lm.generate("The cat", SamplingParams(max_tokens=12, temperature=0.0))
    assert isinstance(greedy, str)
    cases = [
        {"name": "exact", "prompt": "The cat", "max_tokens": 12, "expect": {"exact": greedy}},
        {"name": "contains", "prompt": "The cat", "max_tokens": 12,
         "expect": {"contains": greedy[2:6].upper(), "ignore_case": True}},
        {"name": "regex", "prompt": "A dog", "max_tokens": 16, "temperature": 0.8, "seed": 3,
         "expect": {"regex": r"^[\x00-\x7f]{16}$"}},
        {"name": "absent", "prompt": "A dog", "max_tokens": 8, "expect": {"not_contains": "~~~"}},
        {"name": "impossible", "prompt": "A dog", "max_tokens": 4,
         "expect": {"exact": "this needs far more than four bytes"}},
    ]  # fmt: skip
    run, report = run_suite(client, {"kind": "prompts", "model": "nano-bigram", "cases": cases})
    assert run["status"] == "succeeded" and report is not None
    assert statuses(report) == {
        "exact": "passed",
        "contains": "passed",
        "regex": "passed",
        "absent": "passed",
        "impossible": "failed",
    }
    impossible = report["cases"][-1]["details"]
    assert impossible["completion_tokens"] == 4 and impossible["finish_reason"] == "length"
    assert report["target"]["path"] == "scheduler"


def test_missing_model_fails_the_run(client: httpx.Client) -> None:
    run, report = run_suite(client, {"kind": "consistency", "model": "no-such-model"})
    assert run["status"] == "failed"
    assert run["error"]["code"] == "model_not_found" and NANO in run["error"]["message"]
    assert report is not None and report["cases"] == []


def test_unavailable_device_fails_the_run(client: httpx.Client) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the unavailable-device path needs one without")
    run, _ = run_suite(client, {"kind": "smoke", "model": NANO, "device": "cuda"})
    assert run["status"] == "failed" and run["error"]["code"] == "device_unavailable"


def _many_prompts(count: int, max_tokens: int) -> list[dict[str, Any]]:
    return [
        {"name": f"case-{i}", "prompt": f"Prompt {i}", "max_tokens": max_tokens,
         "expect": {"not_contains": "~~~"}}
        for i in range(count)
    ]  # fmt: skip


def test_cancel_mid_suite_keeps_the_partial_report(client: httpx.Client) -> None:
    body = {"kind": "prompts", "model": NANO, "cases": _many_prompts(40, 64)}
    run = submit(client, body)
    status = wait_for_progress(client, run["id"])
    assert status["status"] == "running"
    cancelled = client.post(f"/api/test/cancel/{run['id']}")
    assert cancelled.status_code == 200
    final = wait_finished(client, run["id"])
    assert final["status"] == "cancelled" and final["error"]["code"] == "cancelled"
    report = client.get(f"/api/test/results/{run['id']}").json()["result"]
    assert 1 <= len(report["cases"]) < 40
    assert report["passed"] == len(report["cases"])


def test_timeout_fails_the_run_with_the_partial_report(client: httpx.Client) -> None:
    body = {"kind": "prompts", "model": NANO, "cases": _many_prompts(60, 64), "timeout_s": 0.5}
    run, report = run_suite(client, body)
    assert run["status"] == "failed" and run["error"]["code"] == "timeout"
    assert "timeout_s=0.5" in run["error"]["message"]
    assert report is not None and len(report["cases"]) < 60


def wait_for_progress(client: httpx.Client, run_id: str) -> dict[str, Any]:
    """The run's status once its first case has finished."""
    status: dict[str, Any] = poll_until(
        lambda: client.get(f"/api/test/status/{run_id}").json(),
        lambda status: (
            status["progress"] > 0 or (status["status"] != "running" and status["attempts"])
        ),
        timeout=60,
        what="the first case to finish",
    )
    return status


def test_without_an_engine_the_direct_path_is_tested(
    component_models: Path, tmp_path: Path
) -> None:
    settings = component_settings(component_models, tmp_path / "db.sqlite")
    with serve(create_app(settings, engine_factory=no_engine)) as live:
        with httpx.Client(base_url=live.url, timeout=30) as client:
            _, report = run_suite(client, {"kind": "smoke", "model": NANO, "max_tokens": 4})
    report = assert_clean(report)
    assert statuses(report)["serving_path"] == "skipped" and report["passed"] == 7
