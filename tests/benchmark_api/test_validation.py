"""Bad benchmark parameters get a clear 4xx with a machine-readable code, never a 500."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import torch

from benchmark_api.app import SPEC
from benchmark_api.schemas import EngineBenchRequest
from core.api.app import create_base_app
from tests.benchmark_api.conftest import TINY_ENGINE, results
from tests.conftest import engine_settings

SERVING: dict[str, Any] = {"kind": "serving", "base_url": "http://127.0.0.1:9/v1"}


def refused(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/api/benchmark/run", json=body)
    assert 400 <= response.status_code < 500, response.text
    error: dict[str, Any] = response.json()["error"]
    error["status"] = response.status_code
    return error


@pytest.mark.parametrize(
    ("changes", "param", "code"),
    [
        ({"batch_sizes": []}, "batch_sizes", "invalid_request"),
        ({"context_lengths": []}, "context_lengths", "invalid_request"),
        ({"modes": []}, "modes", "invalid_request"),
        ({"dtypes": []}, "dtypes", "invalid_request"),
        ({"new_tokens": []}, "new_tokens", "invalid_request"),
        ({"batch_sizes": [0]}, "batch_sizes", "invalid_request"),
        ({"batch_sizes": [10**6]}, "batch_sizes", "limit_exceeded"),
        ({"context_lengths": [10**9]}, "context_lengths", "limit_exceeded"),
        ({"new_tokens": 10**7}, "new_tokens", "limit_exceeded"),
        ({"repeats": 21}, "repeats", "limit_exceeded"),
        ({"repeats": 0}, "repeats", "invalid_request"),
        ({"warmup": 11}, "warmup", "limit_exceeded"),
        ({"recompute_max_context": 10**6}, "recompute_max_context", "limit_exceeded"),
        ({"bandwidth_mb": 10**6}, "bandwidth_mb", "limit_exceeded"),
        (
            {"batch_sizes": list(range(1, 40)), "context_lengths": list(range(1, 40))},
            "batch_sizes",
            "limit_exceeded",
        ),
        ({"device": "tpu"}, "device", "invalid_request"),
        ({"model": "../etc"}, "model", "invalid_model_name"),
    ],
)
def test_engine_parameters_out_of_range_are_400(
    client: httpx.Client, changes: dict[str, Any], param: str, code: str
) -> None:
    error = refused(client, TINY_ENGINE | changes)
    assert (error["status"], error["param"], error["code"]) == (400, param, code), error


def test_unavailable_device_is_400(client: httpx.Client) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    error = refused(client, TINY_ENGINE | {"device": "cuda"})
    assert (error["status"], error["param"], error["code"]) == (400, "device", "device_unavailable")


@pytest.mark.parametrize(
    ("changes", "param", "code"),
    [
        ({"concurrency": []}, "concurrency", "invalid_request"),
        ({"concurrency": None}, "concurrency", "invalid_request"),
        ({"concurrency": [0]}, "concurrency", "invalid_request"),
        ({"concurrency": [10**5]}, "concurrency", "limit_exceeded"),
        ({"request_rate": []}, "request_rate", "invalid_request"),
        ({"request_rate": [-1]}, "request_rate", "invalid_request"),
        ({"num_requests": 0}, "num_requests", "invalid_request"),
        ({"num_requests": 10**6}, "num_requests", "limit_exceeded"),
        ({"max_tokens": 10**6}, "max_tokens", "limit_exceeded"),
        ({"prompt_bytes": 10**6}, "prompt_bytes", "limit_exceeded"),
        ({"temperature": 5}, "temperature", "limit_exceeded"),
        (
            {"concurrency": list(range(1, 10)), "request_rate": list(range(1, 10))},
            "concurrency",
            "limit_exceeded",
        ),
        ({"base_url": "ftp://127.0.0.1/v1"}, "base_url", "invalid_url"),
        ({"base_url": "http://user:pw@127.0.0.1/v1"}, "base_url", "invalid_url"),
        ({"base_url": "http://127.0.0.1:99999/v1"}, "base_url", "invalid_url"),
        ({"base_url": "not a url"}, "base_url", "invalid_url"),
    ],
)
def test_serving_parameters_out_of_range_are_400(
    client: httpx.Client, changes: dict[str, Any], param: str, code: str
) -> None:
    error = refused(client, SERVING | changes)
    assert (error["status"], error["param"], error["code"]) == (400, param, code), error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (TINY_ENGINE | {"modes": ["warp"]}, "modes.0"),
        (TINY_ENGINE | {"dtypes": ["int3"]}, "dtypes.0"),
        (TINY_ENGINE | {"batch_size": [1]}, "batch_size"),
        (TINY_ENGINE | {"repeats": "many"}, "repeats"),
        ({"kind": "warp"}, "kind"),
    ],
)
def test_malformed_bodies_get_the_framework_validation_error(
    client: httpx.Client, body: dict[str, Any], param: str
) -> None:
    error = refused(client, body)
    assert (error["status"], error["param"], error["code"]) == (422, param, "invalid_request")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (TINY_ENGINE | {"batch_sizes": [64]}, "batch_sizes"),
        (TINY_ENGINE | {"new_tokens": 5000}, "new_tokens"),
        (SERVING | {"max_tokens": 5000}, "max_tokens"),
    ],
)
def test_sizes_over_the_server_settings_are_400(
    client: httpx.Client, body: dict[str, Any], param: str
) -> None:
    # The test server keeps the default limits: max_batch 32 and max_tokens_limit 4096,
    # under the hard caps, so these refusals come from the settings.
    error = refused(client, body)
    assert (error["status"], error["param"], error["code"]) == (400, param, "limit_exceeded")
    assert "generation." in error["message"]


def test_jobs_recheck_the_settings_of_their_worker(
    sqlite_url: str, models_dir: Any, live_server: Any
) -> None:
    """A run stored without the submission checks (as a server with looser settings would
    have accepted it) is refused by its job."""
    server = live_server(
        create_base_app(engine_settings(sqlite_url, models_dir), components=[SPEC])
    )
    # Validated outside a request, the model leaves the settings checks to the job.
    request = EngineBenchRequest.model_validate(TINY_ENGINE | {"batch_sizes": [64]})
    run, _ = server.app.state.run_service.create(
        component="benchmark", kind="engine", params=request.model_dump(mode="json")
    )
    with httpx.Client(base_url=server.url, timeout=30) as client:
        body = results(client, run.id)
    assert body["run"]["status"] == "failed"
    assert body["run"]["error"]["code"] == "limit_exceeded"
    assert body["result"] is None


def test_openapi_documents_the_benchmark_routes(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    operations = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    assert {
        "benchmark_run",
        "benchmark_results",
        "benchmark_plot_png",
        "benchmark_plot_svg",
        "benchmark_results_csv",
        "benchmark_compare",
    } <= operations
    assert "/api/benchmark/results/{run_id}.csv" in spec["paths"]
    schemas = spec["components"]["schemas"]
    assert {"EngineBenchRequest", "ServingBenchRequest", "CompareResponse"} <= set(schemas)
