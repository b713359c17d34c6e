"""The endpoint suite against real servers: a conforming OpenAI-compatible app, a faulty one,
nothing at all, and our own Generator's /v1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from core.api.app import create_base_app
from test_api.app import SPEC, create_app
from tests.support.server import LiveServer, free_port, serve
from tests.test_api.conftest import component_settings
from tests.test_api.helpers import assert_clean, error_code, run_suite, statuses, submit
from tests.test_api.openai_apps import MODEL, create_openai_app

ALL_CASES = {
    "models_list",
    "completion",
    "chat_completion",
    "completion_stream",
    "chat_stream",
    "usage_counts",
    "stop_string",
    "finish_reason_length",
    "error_invalid_request",
    "error_unknown_model",
    "error_before_stream",
}


@pytest.fixture(scope="module")
def conforming() -> Iterator[LiveServer]:
    with serve(create_openai_app(conforming=True)) as live:
        yield live


@pytest.fixture(scope="module")
def faulty() -> Iterator[LiveServer]:
    with serve(create_openai_app(conforming=False)) as live:
        yield live


def test_the_conforming_app_satisfies_the_openai_sdk(conforming: LiveServer) -> None:
    """The reference for "conforming" is the real client, not our own reading of the spec."""
    client = openai.OpenAI(base_url=f"{conforming.url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == [MODEL]
    completion = client.completions.create(model=MODEL, prompt="Hi", max_tokens=5, stop=[" "])
    assert completion.choices[0].text == "once" and completion.choices[0].finish_reason == "stop"
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "once u" and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="Hi", max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=-1)


def test_a_conforming_endpoint_passes(client: httpx.Client, conforming: LiveServer) -> None:
    run, report = run_suite(client, {"kind": "endpoint", "base_url": f"{conforming.url}/v1/"})
    report = assert_clean(report)
    assert run["status"] == "succeeded" and report["passed"] == len(ALL_CASES)
    assert set(statuses(report)) == ALL_CASES
    assert report["target"]["base_url"] == f"{conforming.url}/v1"
    stop = next(c for c in report["cases"] if c["name"] == "stop_string")["details"]
    assert stop["text"] == stop["expected"] and stop["stop"] not in stop["text"]


def test_a_faulty_endpoint_fails_the_right_cases(client: httpx.Client, faulty: LiveServer) -> None:
    body = {"kind": "endpoint", "base_url": f"{faulty.url}/v1", "model": MODEL}
    run, report = run_suite(client, body)
    assert run["status"] == "succeeded" and report is not None
    failed = {name for name, status in statuses(report).items() if status == "failed"}
    assert failed == {
        "completion_stream",  # [DONE] twice
        "chat_stream",
        "usage_counts",  # compares against a stream, which is faulty
        "stop_string",  # stop strings ignored
        "error_invalid_request",  # 422 {"detail": ...}, not the error body
        "error_before_stream",
        "error_unknown_model",  # any model accepted
    }
    assert report["passed"] == len(ALL_CASES) - len(failed) and report["errored"] == 0
    details = {c["name"]: c["details"] for c in report["cases"]}
    assert details["completion_stream"]["done_events"] == 2
    assert details["error_unknown_model"]["status"] == 200


def test_an_unreachable_endpoint_fails_the_run(client: httpx.Client) -> None:
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    run, _ = run_suite(client, {"kind": "endpoint", "base_url": base_url})
    assert run["status"] == "failed" and run["error"]["code"] == "endpoint_unreachable"


def test_the_allow_list_comes_from_settings(
    component_models: Path, tmp_path: Path, conforming: LiveServer
) -> None:
    settings = component_settings(
        component_models, tmp_path / "db.sqlite", **{"outbound.allow_hosts": ["localhost"]}
    )
    with serve(create_app(settings)) as live, httpx.Client(base_url=live.url) as client:
        refused = client.post(
            "/api/test/run", json={"kind": "endpoint", "base_url": f"{conforming.url}/v1"}
        )
        assert error_code(refused, 400) == "url_not_allowed"
        by_name = f"http://localhost:{conforming.port}/v1"
        run = submit(client, {"kind": "endpoint", "base_url": by_name})
        assert run["params"]["base_url"] == by_name


def test_our_own_generator_conforms(component_models: Path, tmp_path: Path) -> None:
    """The default base_url is this server's /v1: the Test and Generator components together."""
    from generator_api import app as generator

    settings = component_settings(component_models, tmp_path / "db.sqlite")
    app = create_base_app(settings, components=[SPEC, generator.SPEC])
    with serve(app) as live, httpx.Client(base_url=live.url, timeout=30) as client:
        run, report = run_suite(client, {"kind": "endpoint", "model": "bdh-nano", "max_tokens": 4})
        assert run["params"]["base_url"] == f"{live.url}/v1"
        report = assert_clean(report)
        assert report["passed"] == len(ALL_CASES), [
            c for c in report["cases"] if c["status"] != "passed"
        ]
