"""Generator runs through the run convention: text runs, model runs, cancellation."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from generator_api.app import create_app
from tests.conftest import engine_settings
from tests.support.server import LiveServer, serve

from .conftest import MODEL, wait_ready, wait_until
from .runs_support import run_events, wait_for_run

# A few kilobytes of plain text: enough for a handful of training steps on bdh-nano.
CORPUS = "".join(
    f"Line {i}: the quick brown fox jumps over the lazy dog, and the dog sleeps.\n"
    for i in range(80)
)


def start_server(store_url: str, directory: Path, models_dir: Path) -> Any:
    # Model runs write models: each server works on its own copy of the models directory.
    models = directory / "models"
    shutil.copytree(models_dir, models)
    settings = engine_settings(store_url, models, data_dir=str(directory / "data"))
    return serve(create_app(settings))


@pytest.fixture(scope="module")
def runs_server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[LiveServer]:
    directory = tmp_path_factory.mktemp("runs")
    with start_server(f"sqlite:///{directory / 'hatchery.db'}", directory, models_dir) as live:
        wait_ready(live.url)
        yield live


@pytest.fixture
def http(runs_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=runs_server.url, timeout=30) as client:
        yield client


def test_text_run_streams_tokens_and_returns_completions(
    store_url: str, tmp_path: Path, models_dir: Path
) -> None:
    """End to end on every store (SQLite, and PostgreSQL when configured)."""
    with (
        start_server(store_url, tmp_path, models_dir) as live,
        httpx.Client(base_url=live.url, timeout=30) as http,
    ):
        wait_ready(live.url)
        check_text_run(http)


def check_text_run(http: httpx.Client) -> None:
    body = {
        "kind": "text",
        "model": MODEL,
        "prompts": ["Hello", "Good day"],
        "max_tokens": 10,
        "temperature": 0.8,
        "seed": 3,
        "n": 2,
        "stop": ["~~never~~"],
    }
    submitted = http.post("/api/generator/run", json=body)
    assert submitted.status_code == 202, submitted.text
    run = wait_for_run(http, submitted.json()["id"])
    assert run["status"] == "succeeded" and run["model"] == MODEL and run["progress"] == 1.0
    results = http.get(f"/api/generator/results/{run['id']}").json()["result"]
    completions = results["completions"]
    assert [(c["prompt_index"], c["index"]) for c in completions] == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    ]
    assert all(c["finish_reason"] == "length" for c in completions)
    assert all(c["usage"]["completion_tokens"] == 10 for c in completions)
    assert results["usage"] == {"prompt_tokens": 13, "completion_tokens": 40, "total_tokens": 53}

    # Token events, concatenated per (prompt, choice), are exactly the completions.
    texts: dict[tuple[int, int], str] = {}
    for event in run_events(http, run["id"]):
        if event["type"] == "token":
            key = (event["data"]["prompt_index"], event["data"]["choice"])
            texts[key] = texts.get(key, "") + event["data"]["text"]
    assert texts == {(c["prompt_index"], c["index"]): c["text"] for c in completions}

    # The same seed through /v1 gives the same text as the run.
    same = http.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": "Hello", "max_tokens": 10, "temperature": 0.8, "seed": 3},
    )
    assert same.json()["choices"][0]["text"] == completions[0]["text"]


def test_text_run_limits_fail_the_run_with_a_code(http: httpx.Client) -> None:
    too_many = {"kind": "text", "model": MODEL, "prompts": ["x"], "max_tokens": 10**6}
    run = wait_for_run(http, http.post("/api/generator/run", json=too_many).json()["id"])
    assert run["status"] == "failed" and run["error"]["code"] == "invalid_request"
    missing = {"kind": "text", "model": "missing", "prompts": ["x"]}
    run = wait_for_run(http, http.post("/api/generator/run", json=missing).json()["id"])
    assert run["status"] == "failed" and run["error"]["code"] == "model_not_found"
    assert http.post("/api/generator/run", json={"kind": "text", "prompts": []}).status_code == 422


def test_cancelling_a_text_run_stops_generation(
    http: httpx.Client, runs_server: LiveServer
) -> None:
    body = {"kind": "text", "model": MODEL, "prompts": ["a", "b"] * 4, "max_tokens": 4000}
    run_id = http.post("/api/generator/run", json=body).json()["id"]
    engine = runs_server.app.state.engine
    wait_until(lambda: engine.stats()["totals"]["running"] > 0, what="generation to start")
    cancelled = http.post(f"/api/generator/cancel/{run_id}")
    assert cancelled.status_code == 200
    run = wait_for_run(http, run_id, timeout=10)
    assert run["status"] == "cancelled"
    # The partial result keeps what was generated; the interrupted choices end with "abort".
    partial = http.get(f"/api/generator/results/{run_id}").json()["result"]
    assert partial is not None and partial["completions"]
    assert {c["finish_reason"] for c in partial["completions"]} == {"abort"}
    assert all(c["usage"]["completion_tokens"] < 4000 for c in partial["completions"])
    assert engine.stats()["totals"]["running"] == 0


def create_model(http: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {
        "name": "fox",
        "template": "bdh-nano",
        "text": CORPUS,
        "steps": 6,
        "batch_size": 4,
        "block_size": 32,
        "eval_every": 3,
        "eval_batches": 1,
        **fields,
    }
    response = http.post("/api/generator/model", json=body)
    assert response.status_code == 202, response.text
    assert response.headers["Location"] == response.json()["links"]["status"]
    return wait_for_run(http, response.json()["id"])


def greedy(http: httpx.Client, model: str) -> dict[str, Any]:
    response = http.post(
        "/v1/completions",
        json={"model": model, "prompt": "The ", "max_tokens": 16, "temperature": 0},
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_model_run_trains_registers_and_serves_the_model(http: httpx.Client) -> None:
    run = create_model(http)
    assert run["status"] == "succeeded", run
    assert run["kind"] == "model" and run["model"] == "fox"
    result = http.get(f"/api/generator/results/{run['id']}").json()["result"]
    assert result["name"] == "fox" and result["template"] == "bdh-nano"
    assert result["parameters"] > 0 and result["size_bytes"] > 0
    assert result["corpus"] == "inline" and result["corpus_bytes"] == len(CORPUS.encode())
    metrics = result["metrics"]
    assert metrics["steps"] == 6 and metrics["val_bits_per_byte"] > 0

    events = [e for e in run_events(http, run["id"]) if e["type"] == "metric"]
    names = {e["data"]["name"] for e in events}
    assert {"loss", "tokens_per_s", "val_bits_per_byte"} <= names
    assert all(set(e["data"]) == {"name", "value", "step", "unit"} for e in events)
    assert max(e["data"]["step"] for e in events) == 6

    assert "fox" in {m["id"] for m in http.get("/v1/models").json()["data"]}
    first = greedy(http, "fox")
    assert first["usage"]["completion_tokens"] == 16

    # The name is taken: without overwrite it is refused at the door (409, no run); with it
    # the new weights are served.
    before = http.get("/api/generator/runs", params={"kind": "model"}).json()["count"]
    refused = http.post("/api/generator/model", json={"name": "fox", "steps": 0})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "model_exists"
    assert http.get("/api/generator/runs", params={"kind": "model"}).json()["count"] == before
    again = create_model(http, overwrite=True, seed=99, steps=0, text=None)
    assert again["status"] == "succeeded"
    assert http.get(f"/api/generator/results/{again['id']}").json()["result"]["metrics"] is None
    assert greedy(http, "fox")["choices"][0]["text"] != first["choices"][0]["text"]


def test_cancelling_a_model_run_stops_training(http: httpx.Client) -> None:
    body = {"name": "endless", "text": CORPUS, "steps": 100_000, "block_size": 32}
    run_id = http.post("/api/generator/model", json=body).json()["id"]
    wait_until(
        lambda: http.get(f"/api/generator/status/{run_id}").json()["progress"] > 0,
        what="training to start",
    )
    assert http.post(f"/api/generator/cancel/{run_id}").status_code == 200
    run = wait_for_run(http, run_id, timeout=10)
    assert run["status"] == "cancelled"
    assert "endless" not in {m["id"] for m in http.get("/v1/models").json()["data"]}
    losses = [e for e in run_events(http, run_id) if e["type"] == "metric"]
    assert losses and all(e["data"]["step"] < 100_000 for e in losses)


def test_model_run_validation(http: httpx.Client) -> None:
    for body, param in (
        ({"name": "x", "template": "bdh-huge", "steps": 0}, "template"),
        ({"name": "../x", "steps": 0}, "name"),
        ({"name": "x", "corpus": "shakespeare", "text": "abc"}, None),
        ({"name": "x", "steps": 5}, None),
    ):
        response = http.post("/api/generator/model", json=body)
        assert response.status_code == 422, response.text
        if param:
            assert response.json()["error"]["param"] == param
    short = create_model(http, name="short", text="too short", block_size=64)
    assert short["status"] == "failed" and short["error"]["code"] == "invalid_training"
    # A missing corpus file is refused at the door, not accepted to fail later.
    body = {"name": "nocorpus", "corpus": "no-such-file.txt", "steps": 2}
    unknown = http.post("/api/generator/run", json={"kind": "model", **body})
    assert unknown.status_code == 422, unknown.text
    assert unknown.json()["error"]["code"] == "corpus_unavailable"
    assert unknown.json()["error"]["param"] == "corpus"


def test_model_templates_route(http: httpx.Client) -> None:
    templates = http.get("/api/generator/templates").json()
    assert templates["count"] == len(templates["data"]) >= 4
    nano = next(t for t in templates["data"] if t["name"] == "bdh-nano")
    assert nano["parameters"] > 0 and nano["config"]["n_layer"] >= 1
