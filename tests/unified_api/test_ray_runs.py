"""The real components' runs on Ray workers, end to end through the run convention.

A unified server (bdh-nano) on PostgreSQL dispatches to the session's local Ray cluster; each
attempt runs in a Ray actor that builds its own engine from the shared models directory. The
client follows the runs over the WebSocket and keeps per-attempt state in ``RunTranscript``.
"""

from __future__ import annotations

import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients import ApiClient, RunTranscript
from tests.conftest import NANO_MODEL, engine_settings, postgres_base_url
from tests.support.poll import poll_until
from tests.support.server import LiveServer, serve
from unified_api.app import create_app

pytestmark = [pytest.mark.ray, pytest.mark.postgres]


@pytest.fixture(scope="module")
def client(
    ray_address: str, models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiClient]:
    base = postgres_base_url()
    models = tmp_path_factory.mktemp("ray-models")  # a copy: the model run adds a model here
    shutil.copytree(models_dir / NANO_MODEL, models / NANO_MODEL)
    schema = f"ray_{uuid.uuid4().hex[:10]}"
    url = _schema_url(base, schema)
    settings = engine_settings(
        url,
        models,
        **{
            "executor.kind": "ray",
            "executor.ray_address": ray_address,
            "executor.heartbeat_s": 0.5,
            "generation.max_tokens_limit": 20_000,
            "model.threads": 1,
            "executor.ray_resources": {"generator.model": {"num_cpus": 1}},
        },
    )
    with serve(create_app(settings)) as live, ApiClient(live.url) as api:
        _wait_ready(api, live)
        yield api
    _drop_schema(base, schema)


def _schema_url(base: str, schema: str) -> str:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    admin = create_engine(base, poolclass=NullPool)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


def _drop_schema(base: str, schema: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    admin = create_engine(base, poolclass=NullPool)
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def _wait_ready(api: ApiClient, live: LiveServer) -> None:
    import httpx

    poll_until(
        lambda: httpx.get(f"{live.url}/ready"),
        lambda response: response.status_code == 200,
        timeout=60,
        interval=0.1,
        what="/ready",
    )


def _follow(client: ApiClient, run_id: str, kill_attempt: int | None = None) -> RunTranscript:
    """Follow a generator run; with ``kill_attempt``, SIGKILL that attempt's Ray worker."""
    transcript, pids = RunTranscript(), []
    for event in client.monitor_generation_ws(run_id):
        transcript.feed(event)
        if event.type == "log" and "pid" in event.data:
            pids.append(int(event.data["pid"]))
        if kill_attempt is not None and event.type == "token" and event.attempt == kill_attempt:
            os.kill(pids[-1], signal.SIGKILL)
            kill_attempt = None
    assert pids and os.getpid() not in pids  # every attempt ran in a Ray worker process
    return transcript


def test_a_text_run_on_a_ray_worker(client: ApiClient) -> None:
    run = client.generate_text(NANO_MODEL, ["Hello", "Hi"], max_tokens=24, temperature=0.0)
    transcript = _follow(client, run.id)
    results = client.get_generation_results(run.id)
    assert results.succeeded and results.run.attempts == 1
    completions = results.result_dict()["completions"]  # type: ignore[index]
    for completion in completions:
        assert completion["usage"]["completion_tokens"] == 24
        assert (
            transcript.text(completion["prompt_index"], completion["index"]) == completion["text"]
        )


def test_a_text_run_whose_worker_is_killed_is_retried_and_its_text_not_doubled(
    client: ApiClient,
) -> None:
    run = client.generate_text(NANO_MODEL, ["Once upon"], max_tokens=6000, temperature=0.0, seed=1)
    transcript = _follow(client, run.id, kill_attempt=1)
    results = client.get_generation_results(run.id)
    assert results.succeeded and results.run.attempts == 2, results.run
    assert transcript.attempt == 2 and transcript.restarts == [
        {"attempt": 2, "reason": "worker_lost"}
    ]
    (completion,) = results.result_dict()["completions"]  # type: ignore[index]
    assert transcript.text() == completion["text"]  # the final attempt's text, once


def test_a_model_run_and_a_test_run_on_ray_workers(client: ApiClient) -> None:
    name = f"ray-{uuid.uuid4().hex[:8]}"
    text = "To be, or not to be, that is the question. " * 40
    created = client.generate_model(
        name, "bdh-nano", text=text, steps=3, batch_size=2, block_size=16
    )
    transcript = _follow(client, created.id)
    made = client.get_generation_results(created.id)
    assert made.succeeded, made.run.error
    assert made.result_dict()["metrics"]["steps"] == 3  # type: ignore[index]
    assert "loss" in transcript.metrics

    tested = client.run_test(name, "smoke")  # the model the Ray worker wrote, shared directory
    report = client.monitor_test(tested.id, poll_interval=0.2, timeout=180)
    assert report.succeeded, report.run.error
    assert report.result_dict()["cases"]  # type: ignore[index]
