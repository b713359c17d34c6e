"""Both clients against the real components in the unified server (real engine, bdh-nano)."""

from __future__ import annotations

import csv
import io
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from clients import ModelCard, NotFound, RunStatus, ValidationFailed
from tests.clients.conftest import TERMINAL, wait_until
from tests.support.server import LiveServer
from unified_api.components import COMPONENTS as REGISTRY

NANO = "bdh-nano"
TINY_ENGINE_SWEEP: dict[str, Any] = {
    "model": NANO,
    "batch_sizes": [1],
    "context_lengths": [8],
    "new_tokens": [2],
    "modes": ["recurrent"],
    "repeats": 1,
    "warmup": 0,
    "bandwidth_mb": 1,
}


def declared_result(component: str, kind: str) -> Any:
    """The result model the component declares for ``kind`` (its ``SPEC.result_model``)."""
    declared = REGISTRY[component].spec().result_model
    return declared[kind] if isinstance(declared, dict) else declared


@pytest.fixture
def client(make_client: Callable[..., Any], real: LiveServer) -> Any:
    return make_client(real.url, timeout=60)


def test_run_test_smoke(client: Any) -> None:
    TestReport = declared_result("test", "smoke")
    run = client.run_test(NANO, "smoke", max_tokens=4)
    assert run.component == "test" and run.kind == "smoke" and run.model == NANO
    results = client.monitor_test(run.id, poll_interval=0.1, timeout=120)
    assert results.succeeded, results.run.error
    report = results.result
    assert isinstance(report, TestReport) and report.suite == "smoke"
    # The suite's verdicts are the Test component's business; the client must carry them whole.
    counts = report.passed + report.failed + report.skipped + report.errored
    assert report.passed > 0 and counts == len(report.cases)
    cases = [event for event in client.monitor_test_ws(run.id) if event.type == "case"]
    assert [event.data["name"] for event in cases] == [case.name for case in report.cases]
    assert client.list_test_runs(kind="smoke", model=NANO).count >= 1


def test_generate_text_streams_its_tokens(client: Any) -> None:
    TextRunResult = declared_result("generator", "text")
    run = client.generate_text(NANO, ["Hello", "Hi"], max_tokens=6, temperature=0.0, n=1)
    pieces: dict[tuple[int, int], str] = defaultdict(str)
    for event in client.monitor_generation_ws(run.id):
        if event.type == "token":
            pieces[event.data["prompt_index"], event.data["choice"]] += event.data["text"]
    results = client.get_generation_results(run.id)
    assert results.succeeded and isinstance(results.result, TextRunResult)
    completions = results.result.completions
    assert len(completions) == 2
    for completion in completions:
        assert pieces[completion.prompt_index, completion.index] == completion.text
        assert completion.usage.completion_tokens == 6
    again = client.get_generation_status(run.id)
    assert again.status == RunStatus.succeeded and again.kind == "text"


def test_generate_model_then_serve_it(client: Any) -> None:
    ModelRunResult = declared_result("generator", "model")
    name = f"tiny-{uuid.uuid4().hex[:8]}"
    text = "To be, or not to be, that is the question. " * 40
    run = client.generate_model(name, "bdh-nano", text=text, steps=3, batch_size=2, block_size=16)
    assert run.model == name
    results = client.monitor_generation(run.id, poll_interval=0.1, timeout=120)
    assert results.succeeded, results.run.error
    created = results.result
    assert isinstance(created, ModelRunResult) and created.name == name
    assert created.metrics is not None and created.metrics.steps == 3
    assert name in [card.id for card in client.models()]
    completion = client.complete(name, "To be", max_tokens=3, temperature=0.0)
    assert completion.usage.completion_tokens == 3


def test_openai_compatible_calls(client: Any) -> None:
    cards = client.models()
    assert all(isinstance(card, ModelCard) for card in cards)
    assert NANO in [card.id for card in cards]

    whole = client.complete(NANO, "Once upon", max_tokens=8, temperature=0.0)
    streamed = list(client.complete(NANO, "Once upon", max_tokens=8, temperature=0.0, stream=True))
    assert len(streamed) >= 1 and "".join(streamed) == whole.text
    assert whole.usage.completion_tokens == 8 and whole.choices[0].finish_reason == "length"

    messages = [{"role": "user", "content": "Hi"}]
    reply = client.chat(NANO, messages, max_tokens=6, temperature=0.0)
    pieces = list(client.chat(NANO, messages, max_tokens=6, temperature=0.0, stream=True))
    assert "".join(pieces) == reply.text and reply.usage.completion_tokens == 6
    assert client.chat(NANO, "Hi", max_tokens=6, temperature=0.0).text == reply.text


def test_openai_errors_map_to_exceptions(client: Any) -> None:
    with pytest.raises(NotFound) as missing:
        client.complete("no-such-model", "Hi", max_tokens=2)
    assert missing.value.status_code == 404 and missing.value.code == "model_not_found"
    with pytest.raises(ValidationFailed) as bad:
        client.complete(NANO, "Hi", max_tokens=0, stream=True)  # refused before streaming
    assert bad.value.status_code == 400 and bad.value.param == "max_tokens"


@pytest.fixture(scope="module")
def baseline_benchmark(real: LiveServer) -> str:
    """A finished engine benchmark to compare against (made once for both clients)."""
    response = httpx.post(
        f"{real.url}/api/benchmark/run", json={"kind": "engine", **TINY_ENGINE_SWEEP}, timeout=30
    )
    assert response.status_code == 202, response.text
    run_id: str = response.json()["id"]
    wait_until(real.url, "benchmark", run_id, lambda run: run["status"] in TERMINAL)
    return run_id


def test_run_benchmark_with_plot_csv_and_compare(
    client: Any, client_kind: str, baseline_benchmark: str
) -> None:
    EngineResult = declared_result("benchmark", "engine")
    run = client.run_benchmark("engine", **TINY_ENGINE_SWEEP)
    results = client.monitor_benchmark(run.id, poll_interval=0.1, timeout=120)
    assert results.succeeded, results.run.error
    assert isinstance(results.result, EngineResult) and len(results.result.rows) == 1
    row = results.result.rows[0]
    assert row.status == "measured" and row.decode_tokens_per_s is not None
    assert row.decode_tokens_per_s.median > 0
    assert client.get_benchmark_results(run.id).result == results.result

    # One image format per twin keeps the test short; both formats are covered.
    if client_kind == "sync":
        assert client.get_benchmark_plot(run.id).startswith(b"\x89PNG\r\n\x1a\n")
    else:
        assert b"<svg" in client.get_benchmark_plot(run.id, format="svg")
    table = list(csv.DictReader(io.StringIO(client.get_benchmark_csv(run.id))))
    assert len(table) == 1 and table[0]["mode"] == "recurrent"

    compared = client.compare_benchmarks([baseline_benchmark, run.id])
    assert compared["baseline"] == baseline_benchmark and len(compared["rows"]) == 1
    ratios = compared["rows"][0]["ratios"][run.id]
    assert ratios and all(value is None or value > 0 for value in ratios.values())
