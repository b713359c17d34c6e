"""The examples run as users run them: a subprocess each, against a real server, small sizes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from clients import ApiClient
from tests.conftest import engine_settings
from tests.support.server import LiveServer, serve
from unified_api.app import create_app

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=EXAMPLES.parent,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_end_to_end(real: LiveServer) -> None:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    small = ["--template", "bdh-nano", "--steps", "3", "--batch-size", "2", "--block-size", "16"]
    small += ["--lengths", "1,8", "--contexts", "8", "--new-tokens", "2", "--poll-interval", "0.1"]
    done = run_example("end_to_end.py", "--base-url", real.url, "--name", name, *small)
    output = done.stdout + done.stderr
    # The pipeline must succeed: every run succeeded and no test case failed or errored.
    assert done.returncode == 0, output
    assert f"model {name}: all good" in done.stdout, output
    assert "end to end" in done.stdout, output
    for stage in ("create", "test smoke", "test consistency", "bench recurrent ctx=8"):
        assert stage in done.stdout, output

    # What the example reports is what the server recorded.
    with ApiClient(real.url, typed_results=False) as client:
        created = client.list_generation_runs(model=name)
        tests = client.list_test_runs(model=name)
        benches = client.list_benchmark_runs(model=name)
        assert (created.count, tests.count, benches.count) == (1, 2, 1)
        assert {run.kind for run in tests.data} == {"smoke", "consistency"}
        outcomes = [client.get_test_results(run.id) for run in tests.data]
    assert all(run.status == "succeeded" for run in [*created.data, *tests.data, *benches.data])
    for results in outcomes:
        report = results.result_dict() or {}
        assert results.succeeded and report["failed"] == report["errored"] == 0, report


def test_openai_sdk(real: LiveServer) -> None:
    done = run_example(
        "openai_sdk.py", "--base-url", real.url, "--model", "bdh-nano", "--max-tokens", "4"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "models:" in done.stdout and "bdh-nano" in done.stdout
    assert "--- completion (4 tokens) ---" in done.stdout
    assert "--- 4 tokens streamed ---" in done.stdout


def test_watch_run(real: LiveServer) -> None:
    args = ["--component", "generator", "--model", "bdh-nano", "--max-tokens", "4"]
    done = run_example("watch_run.py", "--base-url", real.url, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "started generator run" in done.stdout
    assert "status -> running" in done.stdout and "status -> succeeded" in done.stdout
    assert "ended: succeeded" in done.stdout


def test_openai_sdk_uses_the_servers_default_model(tmp_path: Path, models_dir: Path) -> None:
    # A model listed before the default one, so that "the first listed" would be wrong.
    own = tmp_path / "models"
    shutil.copytree(models_dir / "bdh-nano", own / "bdh-nano")
    shutil.copytree(models_dir / "bdh-nano", own / "aaa-listed-first")
    settings = engine_settings(f"sqlite:///{tmp_path / 'store.db'}", own)
    with serve(create_app(settings)) as server:
        done = run_example("openai_sdk.py", "--base-url", server.url, "--max-tokens", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "models: aaa-listed-first, bdh-nano" in done.stdout
    assert "using: bdh-nano" in done.stdout
