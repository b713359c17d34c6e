"""Three real component servers wired by ``services.*``: the split topology, for tests.

Generator, Test and Benchmark each run alone (their own app, engine and executor) on a port
of their own, sharing one SQLite store. ``shared_models``: one models directory for all (the
compose default); otherwise each has its own and the Test and Benchmark servers fetch what
they lack from the generator. ``api_key``: auth on everywhere, with that key shared.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import engine_settings
from tests.support.server import LiveServer, free_port

COMPONENTS = ("generator", "test", "benchmark")
PACKAGES = {"generator": "generator_api", "test": "test_api", "benchmark": "benchmark_api"}


@dataclass
class Topology:
    servers: dict[str, LiveServer]
    models_dirs: dict[str, Path]
    api_key: str | None

    def url(self, component: str) -> str:
        return self.servers[component].url

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, component: str) -> httpx.Client:
        return httpx.Client(base_url=self.url(component), headers=self.headers(), timeout=60)


@contextlib.contextmanager
def three_servers(
    base: Path, models_dir: Path, *, shared_models: bool, api_key: str | None
) -> Iterator[Topology]:
    import importlib

    ports = {name: free_port() for name in COMPONENTS}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    store_url = f"sqlite:///{base / 'hatchery.db'}"
    dirs: dict[str, Path] = {}
    for name in COMPONENTS:
        directory = base / ("models" if shared_models else f"models-{name}")
        if not directory.exists():
            if shared_models or name == "generator":
                shutil.copytree(models_dir, directory)
            else:
                directory.mkdir()  # nothing: what it tests, it fetches
        dirs[name] = directory
    servers: dict[str, LiveServer] = {}
    try:
        for name in COMPONENTS:
            overrides: dict[str, Any] = {
                "services.generator_url": urls["generator"],
                "services.test_url": urls["test"],
                "services.benchmark_url": urls["benchmark"],
                "executor.grace_s": 2,
            }
            if name != "generator" and not shared_models:
                overrides["model.preload"] = []  # its models come later, from the generator
            if api_key:
                overrides |= {
                    "auth.enabled": True,
                    "auth.api_keys": [api_key],
                    "services.api_key": api_key,
                }
            settings = engine_settings(store_url, dirs[name], **overrides)
            module = importlib.import_module(f"{PACKAGES[name]}.app")
            server = LiveServer(module.create_app(settings), port=ports[name])
            server.start()
            servers[name] = server
        topology = Topology(servers, dirs, api_key)
        for name in COMPONENTS:
            wait_ready(topology, name)
        yield topology
    finally:
        for server in reversed(servers.values()):
            server.stop()


def wait_ready(topology: Topology, component: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    with topology.client(component) as client:
        while (answer := client.get("/ready")).status_code != 200:
            assert time.monotonic() < deadline, f"{component} not ready: {answer.text}"
            time.sleep(0.05)


def run_to_end(
    client: httpx.Client, component: str, body: dict[str, Any], timeout: float = 180.0
) -> dict[str, Any]:
    """POST the run, poll it to its end, return ``{run, result}``."""
    submitted = client.post(f"/api/{component}/run", json=body)
    assert submitted.status_code == 202, submitted.text
    run_id = submitted.json()["id"]
    deadline = time.monotonic() + timeout
    while True:
        run = client.get(f"/api/{component}/status/{run_id}").json()
        if run["status"] in ("succeeded", "failed", "cancelled"):
            break
        assert time.monotonic() < deadline, f"run did not finish: {run}"
        time.sleep(0.1)
    answer = client.get(f"/api/{component}/results/{run_id}")
    assert answer.status_code == 200, answer.text
    results: dict[str, Any] = answer.json()
    return results
