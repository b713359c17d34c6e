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


SMALL_E2E = ["--template", "bdh-nano", "--steps", "3", "--batch-size", "2", "--block-size", "16"]
SMALL_E2E += ["--lengths", "1,8", "--concurrency", "1,2", "--requests", "4"]
SMALL_E2E += ["--prompt-bytes", "8", "--new-tokens", "2", "--poll-interval", "0.1"]


def check_end_to_end(done: subprocess.CompletedProcess[str], name: str, client: ApiClient) -> None:
    """The pipeline succeeded (every run succeeded, every test passed, so it benchmarked), and
    the example's report is what the servers recorded."""
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert f"model {name}: all good" in done.stdout, output
    assert "end to end" in done.stdout, output
    for stage in ("create", "test smoke", "test consistency", "serve c=1", "serve c=2"):
        assert stage in done.stdout, output
    assert "TTFT p50" in done.stdout and "tok/s" in done.stdout, output
    # /api/runs: every server answers it, and servers that share a store list the same runs.
    created = client.list_runs(component="generator", model=name)
    tests = client.list_runs(component="test", model=name)
    benches = client.list_runs(component="benchmark", model=name)
    assert (created.count, tests.count, benches.count) == (1, 2, 1)
    assert {run.kind for run in tests.data} == {"smoke", "consistency"}
    assert all(run.outcome == "passed" for run in tests.data)
    assert benches.data[0].kind == "serving"
    assert all(run.status == "succeeded" for run in [*created.data, *tests.data, *benches.data])


def test_end_to_end(real: LiveServer) -> None:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    done = run_example("end_to_end.py", "--base-url", real.url, "--name", name, *SMALL_E2E)
    with ApiClient(real.url, typed_results=False) as client:
        check_end_to_end(done, name, client)


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
