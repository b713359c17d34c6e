"""The split topology end to end: generator, test and benchmark servers wired by services.*.

Each topology runs twice: one shared models directory with auth off, and separate models
directories (the Test and Benchmark servers fetch what they lack from the generator) with
auth on and one key shared by the servers.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from clients import ApiClient
from tests.clients.test_examples import SMALL_E2E, check_end_to_end, run_example
from tests.clients.topology import COMPONENTS, Topology, run_to_end, three_servers

KEY = "three-servers-key"
NANO = "bdh-nano"
SERVING = {"kind": "serving", "model": NANO, "concurrency": [2], "num_requests": 4}
SERVING |= {"max_tokens": 4, "prompt_bytes": 8}
ENGINE = {"kind": "engine", "context_lengths": [4], "new_tokens": [2], "modes": ["recurrent"]}
ENGINE |= {"repeats": 1, "warmup": 0, "bandwidth_mb": 1}
FAILING_PROMPTS = {
    "kind": "prompts",
    "model": NANO,
    "cases": [
        {"name": "any text", "prompt": "Hello", "max_tokens": 4, "expect": {"regex": "(?s).*"}},
        {"name": "impossible", "prompt": "Hello", "max_tokens": 4, "expect": {"exact": "\u2603"}},
    ],
}


@pytest.fixture(
    scope="module",
    params=[
        pytest.param((True, None), id="shared-models-auth-off"),
        pytest.param((False, KEY), id="separate-models-auth-on"),
    ],
)
def topology(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, models_dir: Path
) -> Iterator[Topology]:
    shared, key = request.param
    base = tmp_path_factory.mktemp("three-servers")
    with three_servers(base, models_dir, shared_models=shared, api_key=key) as servers:
        yield servers


def _create_model(topology: Topology, name: str) -> dict[str, Any]:
    body = {"kind": "model", "name": name, "template": "bdh-nano", "steps": 2}
    body |= {"text": "to be or not to be, that is the question. " * 20, "block_size": 16}
    body |= {"batch_size": 2}
    with topology.client("generator") as generator:
        done = run_to_end(generator, "generator", body)
    assert done["run"]["status"] == "succeeded", done["run"]["error"]
    return done


def test_a_model_created_on_the_generator_is_tested_and_benchmarked_on_the_others(
    topology: Topology,
) -> None:
    name = f"fresh-{time.monotonic_ns() % 10**9}"
    _create_model(topology, name)
    with topology.client("test") as tester:
        smoke = run_to_end(tester, "test", {"kind": "smoke", "model": name, "max_tokens": 4})
    assert smoke["run"]["status"] == "succeeded", smoke["run"]["error"]
    failing = [c for c in smoke["result"]["cases"] if c["status"] != "passed"]
    assert smoke["run"]["outcome"] == "passed" == smoke["result"]["outcome"], failing
    cases = {case["name"]: case for case in smoke["result"]["cases"]}
    # The serving case asked the generator (this server serves no /v1), with the shared key.
    assert cases["serving_path"]["status"] == "passed", cases["serving_path"]
    assert cases["serving_path"]["details"]["url"] == f"{topology.url('generator')}/v1/completions"
    with topology.client("benchmark") as bench:
        engine = run_to_end(bench, "benchmark", ENGINE | {"model": name})
    assert engine["run"]["status"] == "succeeded", engine["run"]["error"]
    assert engine["result"]["rows"] and engine["run"]["outcome"] is None  # not a test run
    for component in ("test", "benchmark"):
        # Every server sees the model: shared directory, or fetched and checked.
        assert (topology.models_dirs[component] / name / "model.safetensors").is_file()


def test_the_endpoint_suite_and_serving_benchmark_target_the_generator(
    topology: Topology,
) -> None:
    with topology.client("test") as tester:
        endpoint = run_to_end(tester, "test", {"kind": "endpoint", "model": NANO, "max_tokens": 4})
    assert endpoint["run"]["params"]["base_url"] == f"{topology.url('generator')}/v1"
    report = endpoint["result"]
    failing = [case for case in report["cases"] if case["status"] != "passed"]
    assert endpoint["run"]["outcome"] == "passed" and not failing, failing
    with topology.client("benchmark") as bench:
        serving = run_to_end(bench, "benchmark", SERVING)
    assert serving["run"]["status"] == "succeeded", serving["run"]["error"]
    assert serving["run"]["params"]["base_url"] == f"{topology.url('generator')}/v1"
    level = serving["result"]["levels"][0]
    assert level["completed"] == 4 and level["errors"] == 0, level


def test_a_failing_case_is_outcome_failed_in_status_lists_and_events(topology: Topology) -> None:
    with topology.client("test") as tester:
        done = run_to_end(tester, "test", FAILING_PROMPTS)
        run = done["run"]
        assert run["status"] == "succeeded"  # the suite ran to its end ...
        assert run["outcome"] == "failed" == done["result"]["outcome"]  # ... and found a failure
        assert tester.get(f"/api/test/status/{run['id']}").json()["outcome"] == "failed"
        failed = tester.get("/api/test/runs", params={"outcome": "failed"}).json()
        passed = tester.get("/api/test/runs", params={"outcome": "passed"}).json()
        assert run["id"] in {r["id"] for r in failed["data"]}
        assert run["id"] not in {r["id"] for r in passed["data"]}
        assert all(r["outcome"] == "passed" for r in passed["data"])
        everywhere = tester.get("/api/runs", params={"outcome": "failed", "component": "test"})
        assert run["id"] in {r["id"] for r in everywhere.json()["data"]}
        bad = tester.get("/api/test/runs", params={"outcome": "maybe"})
        assert bad.status_code == 422
        events = tester.get(f"/api/test/events/{run['id']}").text
    payloads = [json.loads(line[5:]) for line in events.splitlines() if line.startswith("data:")]
    result_event = next(p for p in payloads if p["type"] == "result")
    assert result_event["data"]["summary"]["outcome"] == "failed"
    assert payloads[-1]["data"] == {"status": "succeeded", "outcome": "failed"}
    with topology.client("generator") as generator:  # the shared store: seen from any server
        shared = generator.get("/api/runs", params={"outcome": "failed"}).json()
    assert run["id"] in {r["id"] for r in shared["data"]}


def test_the_clients_report_the_outcome(
    topology: Topology, make_client: Callable[..., Any]
) -> None:
    client = make_client(topology.url("test"), api_key=topology.api_key, timeout=60)
    started = client.run_test(NANO, "prompts", cases=FAILING_PROMPTS["cases"])
    results = client.monitor_test(started.id, poll_interval=0.1, timeout=120, progress=False)
    assert results.run.status == "succeeded" and results.outcome == "failed"
    assert results.passed is False and results.result.outcome == "failed"
    page = client.list_test_runs(outcome="failed")
    assert started.id in {run.id for run in page.data}
    assert started.id not in {run.id for run in client.list_test_runs(outcome="passed").data}


def test_info_lists_the_peers_and_whether_they_answer(topology: Topology) -> None:
    with topology.client("test") as tester:
        info = tester.get("/info").json()
    peers = {peer["component"]: peer for peer in info["peers"]}
    assert set(peers) == {"generator", "test", "benchmark"}
    assert all(peer["reachable"] for peer in peers.values()), peers
    assert peers["generator"]["url"] == topology.url("generator")


def test_the_generator_lists_its_models_and_serves_their_files(topology: Topology) -> None:
    with topology.client("generator") as generator:
        listed = generator.get("/api/generator/models").json()
        nano = next(model for model in listed["data"] if model["name"] == NANO)
        assert nano["size_bytes"] > 0 and nano["parameters"] > 0
        config = nano["config"]
        per_sequence = 4 * config["n_layer"] * config["mlp_internal_dim_multiplier"]
        assert nano["state_bytes_per_sequence"] == per_sequence * config["n_embd"] ** 2
        manifest = generator.get(f"/api/generator/models/{NANO}/files").json()
        for entry in manifest["files"]:
            body = generator.get(f"/api/generator/models/{NANO}/files/{entry['name']}").content
            assert len(body) == entry["size"]
            assert hashlib.sha256(body).hexdigest() == entry["sha256"]
        missing = generator.get("/api/generator/models/no-such-model/files")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
        other = generator.get(f"/api/generator/models/{NANO}/files/secrets.txt")
        assert other.status_code == 404
    if topology.api_key:
        anonymous = httpx.get(f"{topology.url('generator')}/api/generator/models/{NANO}/files")
        assert anonymous.status_code == 401


def test_runs_are_validated_at_the_door(topology: Topology) -> None:
    with topology.client("generator") as generator:
        base = {"kind": "model", "template": "bdh-nano", "steps": 1}
        corpus = generator.post("/api/generator/run", json=base | {"name": "x1", "corpus": "nope"})
        assert corpus.status_code == 422, corpus.text
        assert corpus.json()["error"]["code"] == "corpus_unavailable"
        exists = generator.post("/api/generator/model", json={"name": NANO, "steps": 0})
        assert exists.status_code == 409 and exists.json()["error"]["code"] == "model_exists"
        again = base | {"name": f"again-{time.monotonic_ns() % 10**9}", "steps": 0}
        assert run_to_end(generator, "generator", again)["run"]["status"] == "succeeded"
        refused = generator.post("/api/generator/run", json=again)
        assert refused.status_code == 409
        replaced = run_to_end(generator, "generator", again | {"overwrite": True})
        assert replaced["run"]["status"] == "succeeded"
        components = generator.get("/api/runs", params={"component": "nope"})
        assert components.status_code == 422
        assert components.json()["error"]["code"] == "unknown_component"
    with topology.client("test") as tester:
        # A test server alone, no base_url: the generator's /v1, never a run of 404s.
        alone = tester.post("/api/test/run", json={"kind": "endpoint"})
        assert alone.status_code == 202
        tester.post(f"/api/test/cancel/{alone.json()['id']}")


def test_the_end_to_end_example_against_three_servers(topology: Topology) -> None:
    name = f"e2e3-{time.monotonic_ns() % 10**9}"
    urls = [f"--{c}-url" for c in ("generator", "test", "benchmark")]
    args = [part for pair in zip(urls, map(topology.url, COMPONENTS), strict=True) for part in pair]
    if topology.api_key:
        args += ["--api-key", topology.api_key]
    done = run_example("end_to_end.py", *args, "--name", name, *SMALL_E2E)
    print(done.stdout)  # the note shows it (pytest -s)
    with ApiClient(topology.url("test"), api_key=topology.api_key, typed_results=False) as client:
        check_end_to_end(done, name, client)
    assert f"generator {topology.url('generator')}" in done.stdout


def test_the_cli_shows_a_failing_test_run(topology: Topology) -> None:
    from typer.testing import CliRunner

    from hatchery_cli import app

    common = ["--url", topology.url("test")]
    if topology.api_key:
        common += ["--api-key", topology.api_key]
    cases = json.dumps(FAILING_PROMPTS["cases"])
    args = ["test", "run", "prompts", "--model", NANO, "-o", f"cases={cases}", "--json"]
    ran = CliRunner().invoke(app, [*args, "--poll-interval", "0.1", *common])
    assert ran.exit_code == 1, ran.output  # the suite ran, a case failed: not a success
    finished = json.loads(ran.stdout)
    assert finished["run"]["outcome"] == "failed" == finished["result"]["outcome"]
    run_id = finished["run"]["id"]
    status = CliRunner().invoke(app, ["test", "status", run_id, *common])
    assert status.exit_code == 0 and "outcome" in status.stdout and "failed" in status.stdout
    listed = CliRunner().invoke(
        app, ["runs", "list", "--component", "test", "--outcome", "failed", "--json", *common]
    )
    assert listed.exit_code == 0, listed.output
    assert run_id in {run["id"] for run in json.loads(listed.stdout)["data"]}
    table = CliRunner().invoke(app, ["runs", "list", "--outcome", "failed", *common])
    assert table.exit_code == 0 and "outcome" in table.stdout, table.output
