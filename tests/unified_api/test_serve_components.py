"""`hatchery serve components` as a real process: three servers wired to each other."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from core.errors import ConfigError
from hatchery_cli import app
from tests.support.server import free_port
from unified_api.serve import resolve_options
from unified_api.topology import plan_components

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("generator", "test", "benchmark")


@pytest.fixture
def components(tmp_path: Path, models_dir: Path) -> Iterator[dict[str, Any]]:
    ports = {name: free_port() for name in NAMES}
    config = tmp_path / "config.yaml"
    settings = {
        "model": {"models_dir": str(models_dir), "default": "bdh-nano", "preload": ["bdh-nano"]},
        "store": {"url": f"sqlite:///{tmp_path / 'shared.db'}"},
        "executor": {"grace_s": 2, "heartbeat_s": 0.5},
        "data_dir": str(tmp_path / "data"),
    }
    config.write_text(yaml.safe_dump(settings), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HATCHERY_")}
    log = (tmp_path / "serve.log").open("w+", encoding="utf-8")
    command = [sys.executable, "-m", "hatchery_cli", "serve", "components", "--config", str(config)]
    command += ["--ports", ",".join(str(ports[name]) for name in NAMES), "--threads", "1"]
    command += ["--graceful-timeout", "2"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    try:
        yield {"process": process, "urls": urls, "log": log}
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
        log.close()


def _log(components: dict[str, Any]) -> str:
    components["log"].seek(0)
    text: str = components["log"].read()
    return text


def _wait_ready(components: dict[str, Any], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    for url in components["urls"].values():
        while True:
            assert components["process"].poll() is None, _log(components)
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, _log(components)
            time.sleep(0.2)


def test_three_servers_wired_to_each_other_and_stopped_together(
    components: dict[str, Any],
) -> None:
    _wait_ready(components)
    urls = components["urls"]
    info = httpx.get(f"{urls['test']}/info", timeout=10).json()
    assert info["components"] == ["test"]  # each server serves its own component alone
    peers = {peer["component"]: peer for peer in info["peers"]}
    assert {name: peer["url"] for name, peer in peers.items()} == urls
    assert all(peer["reachable"] for peer in peers.values()), peers
    # The test server's endpoint suite goes to the generator's /v1 ...
    run = httpx.post(f"{urls['test']}/api/test/run", json={"kind": "endpoint", "max_tokens": 4})
    assert run.status_code == 202, run.text
    assert run.json()["params"]["base_url"] == f"{urls['generator']}/v1"
    deadline = time.monotonic() + 120
    while (status := httpx.get(f"{urls['test']}/api/test/status/{run.json()['id']}").json())[
        "status"
    ] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status["status"] == "succeeded" and status["outcome"] == "passed", status
    # ... and every server lists it: one store.
    listed = httpx.get(f"{urls['generator']}/api/runs", params={"component": "test"}).json()
    assert run.json()["id"] in {r["id"] for r in listed["data"]}

    components["process"].send_signal(signal.SIGTERM)
    assert components["process"].wait(timeout=40) == 0, _log(components)
    for url in urls.values():  # every child stopped with it
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/health", timeout=2)


def test_a_component_alone_takes_its_peers_from_flags() -> None:
    _, settings = resolve_options(
        "test", None, port=9102, services={"generator_url": "http://127.0.0.1:9101"}
    )
    assert settings.services.generator_url == "http://127.0.0.1:9101"
    assert settings.services.test_url is None  # only what was given
    planned = plan_components(None, services={"generator_url": "http://gen.internal:7001"})
    assert [server.name for server in planned] == list(NAMES)
    assert [server.settings.server.port for server in planned] == [8001, 8002, 8003]
    wiring = planned[1].settings.services
    assert wiring.generator_url == "http://gen.internal:7001"  # given: kept
    assert wiring.benchmark_url == "http://127.0.0.1:8003"  # not given: this topology's own
    with pytest.raises(ConfigError, match=r"server\.allow_insecure"):
        plan_components(None, host="0.0.0.0")


def test_serve_components_refuses_single_server_flags() -> None:
    refused = CliRunner().invoke(app, ["serve", "components", "--port", "9000"])
    assert refused.exit_code == 2 and "--ports" in refused.output
    bad = CliRunner().invoke(app, ["serve", "components", "--ports", "1,2"])
    assert bad.exit_code == 2 and "3 ports" in bad.output
