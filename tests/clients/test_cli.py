"""The client CLI (``hatchery test|bench|runs``) against real servers, through typer's runner."""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from clients.cli import app, parse_options
from tests.clients.conftest import TERMINAL, standin_app, submit, wait_until
from tests.support.server import LiveServer, free_port, serve

runner = CliRunner()


def cli(*args: str, **env: str) -> Result:
    return runner.invoke(app, list(args), env={"COLUMNS": "200", **env})


def finished_run(server: LiveServer, body: dict[str, Any]) -> str:
    run_id = submit(server.url, "test", body)
    wait_until(server.url, "test", run_id, lambda run: run["status"] in TERMINAL)
    return run_id


def test_runs_list(standin: LiveServer) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"
    run_id = finished_run(standin, {"kind": "sleep", "steps": 1, "model": model})
    table = cli("runs", "list", "--model", model, "--url", standin.url)
    assert table.exit_code == 0, table.output
    assert run_id in table.output and "1 of 1 runs" in table.output
    as_json = cli("runs", "list", "--model", model, "--json", "--url", standin.url)
    page = json.loads(as_json.stdout)
    assert page["count"] == 1 and page["data"][0]["id"] == run_id


def test_runs_list_is_readable_at_80_columns(standin: LiveServer) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"
    run_ids = [finished_run(standin, {"kind": "sleep", "steps": 1, "model": model}) for _ in "ab"]
    table = cli("runs", "list", "--model", model, "--url", standin.url, COLUMNS="80")
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert "…" not in table.output  # whole cells or no column, never a cut one
    for run_id in run_ids:  # the full id, which `runs status` takes, on one line
        (row,) = [line for line in lines if run_id in line]
        assert "succeeded" in row and "sleep" in row
    wide = cli("runs", "list", "--model", model, "--url", standin.url)
    assert "component" in wide.output and "progress" in wide.output and model in wide.output


def test_status_results_and_watch(standin: LiveServer) -> None:
    run_id = finished_run(standin, {"kind": "chatty", "events": 3, "size": 4})
    status = cli("test", "status", run_id, "--url", standin.url)
    assert status.exit_code == 0 and "succeeded" in status.output and run_id in status.output
    results = cli("test", "results", run_id, "--json", "--url", standin.url)
    assert results.exit_code == 0
    assert json.loads(results.stdout)["result"] == {"kind": "chatty", "done": 3, "attempt": 1}
    watched = cli("test", "watch", run_id, "--url", standin.url)
    assert watched.exit_code == 0, watched.output
    assert watched.output.count("info: xxxx") == 3 and "succeeded" in watched.output
    events = cli("test", "watch", run_id, "--json", "--url", standin.url)
    seqs = [json.loads(line)["seq"] for line in events.stdout.splitlines() if '"seq"' in line]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 6


def test_failures_set_the_exit_status(standin: LiveServer) -> None:
    failed = finished_run(standin, {"kind": "fail", "message": "nope"})
    result = cli("test", "results", failed, "--url", standin.url)
    assert result.exit_code == 1 and "failed" in result.output

    running = submit(standin.url, "test", {"kind": "sleep", "steps": 2000, "step_s": 0.01})
    try:
        conflict = cli("test", "results", running, "--url", standin.url)
        assert conflict.exit_code == 2 and "run_not_finished" in conflict.stderr
    finally:
        httpx.post(f"{standin.url}/api/test/cancel/{running}", timeout=10)

    missing = cli("test", "status", uuid.uuid4().hex, "--url", standin.url)
    assert missing.exit_code == 2 and "run_not_found" in missing.stderr
    down = cli("runs", "list", "--url", f"http://127.0.0.1:{free_port()}")
    assert down.exit_code == 2 and "error" in down.stderr
    bad = cli("test", "run", "smoke", "-o", "no-equals-sign", "--url", standin.url)
    assert bad.exit_code == 2 and "key=value" in bad.output


def test_api_key_from_the_environment(tmp_path: Path) -> None:
    auth = {"auth.enabled": True, "auth.api_keys": ["k-1"]}
    with serve(standin_app(f"sqlite:///{tmp_path / 'h.db'}", **auth)) as server:
        refused = cli("runs", "list", "--url", server.url)
        assert refused.exit_code == 2 and "invalid_api_key" in refused.stderr
        allowed = cli("runs", "list", HATCHERY_URL=server.url, HATCHERY_API_KEY="k-1")
        assert allowed.exit_code == 0 and "0 of 0 runs" in allowed.output


def test_parse_options() -> None:
    parsed = parse_options(["steps=3", 'modes=["recurrent"]', "name=my-model", "text=a=b", "f=0.5"])
    assert parsed == {
        "steps": 3,
        "modes": ["recurrent"],
        "name": "my-model",
        "text": "a=b",
        "f": 0.5,
    }


@pytest.fixture
def real_url(real: LiveServer) -> Iterator[str]:
    yield real.url


def test_test_run_against_the_real_component(real_url: str) -> None:
    args = ["test", "run", "smoke", "--model", "bdh-nano", "-o", "max_tokens=4"]
    result = cli(*args, "--poll-interval", "0.1", "--url", real_url)
    assert "smoke on bdh-nano" in result.output and "passed" in result.output
    run_id = re.search(r"started test run (\w+)", result.output)
    assert run_id is not None
    report = json.loads(cli("test", "results", run_id[1], "--json", "--url", real_url).stdout)
    ok = report["result"]["failed"] == 0 and report["result"]["errored"] == 0
    assert result.exit_code == (0 if ok else 1)


def test_bench_run_results_and_plot(real_url: str, tmp_path: Path) -> None:
    options = ["-o", "context_lengths=[8]", "-o", "new_tokens=2", "-o", 'modes=["recurrent"]']
    options += ["-o", "repeats=1", "-o", "warmup=0", "-o", "bandwidth_mb=1"]
    args = ["bench", "run", "engine", "--model", "bdh-nano", *options, "--no-watch", "--json"]
    started = cli(*args, "--url", real_url)
    assert started.exit_code == 0, started.output
    run_id = json.loads(started.stdout)["id"]
    wrong = cli("test", "status", run_id, "--url", real_url)
    assert wrong.exit_code == 2  # a benchmark run is not a test run
    wait_until(real_url, "benchmark", run_id, lambda run: run["status"] in TERMINAL)

    table = tmp_path / "rows.csv"
    shown = cli("bench", "results", run_id, "--csv", str(table), "--url", real_url)
    assert shown.exit_code == 0, shown.output
    assert "engine benchmark of bdh-nano" in shown.output and "recurrent" in shown.output
    rows = csv.DictReader(io.StringIO(table.read_text(encoding="utf-8")))
    assert [row["mode"] for row in rows] == ["recurrent"]
    plot = tmp_path / "plot.svg"
    drawn = cli("bench", "plot", run_id, "--output", str(plot), "--url", real_url)
    assert drawn.exit_code == 0 and plot.read_bytes().lstrip().startswith(b"<?xml")
