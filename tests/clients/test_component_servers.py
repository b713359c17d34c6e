"""The same clients and CLI against each component served alone (same paths as unified)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from clients import NotFound, RunStatus
from clients.cli import app as cli_app
from tests.clients.conftest import real_settings
from tests.support.server import LiveServer, serve
from unified_api.components import COMPONENTS as REGISTRY

NANO = "bdh-nano"
# One small run per component, through the client method a user would call.
START: dict[str, Callable[[Any], Any]] = {
    "test": lambda client: client.run_test(NANO, "smoke", max_tokens=2),
    "generator": lambda client: client.generate_text(NANO, "Hi", max_tokens=2),
    "benchmark": lambda client: client.run_benchmark(
        "engine", model=NANO, context_lengths=[4], new_tokens=[1], modes=["recurrent"],
        repeats=1, warmup=0, bandwidth_mb=1,
    ),
}  # fmt: skip
FAMILY = {"test": "test", "generator": "generation", "benchmark": "benchmark"}


@pytest.fixture(
    scope="module",
    params=list(START),
)
def alone(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, models_dir: Path
) -> Iterator[tuple[str, LiveServer]]:
    component: str = request.param
    settings = real_settings(tmp_path_factory.mktemp(component), models_dir)
    with serve(REGISTRY[component].create_app(settings)) as server:
        yield component, server


def test_a_component_alone(make_client: Callable[..., Any], alone: tuple[str, LiveServer]) -> None:
    component, server = alone
    client = make_client(server.url, timeout=60, typed_results=False)
    family = FAMILY[component]
    run = START[component](client)
    results = getattr(client, f"monitor_{family}")(run.id, poll_interval=0.1, timeout=120)
    assert results.run.status == RunStatus.succeeded, results.run.error
    events = list(getattr(client, f"monitor_{family}_ws")(run.id))
    assert events[-1].is_terminal
    assert getattr(client, f"list_{family}_runs")().count >= 1
    assert client.list_runs(component=component).count >= 1

    for other, other_family in FAMILY.items():
        if other != component:  # the other components' routes are not served here
            with pytest.raises(NotFound):
                getattr(client, f"list_{other_family}_runs")()
            with pytest.raises(NotFound):
                list(getattr(client, f"monitor_{other_family}_ws")(run.id))


def test_the_cli_against_a_component_alone(alone: tuple[str, LiveServer]) -> None:
    component, server = alone
    args = ["runs", "list", "--component", component, "--json", "--url", server.url]
    listed = CliRunner().invoke(cli_app, args)
    assert listed.exit_code == 0, listed.output
    page = json.loads(listed.stdout)
    expected = httpx.get(f"{server.url}/api/{component}/runs", timeout=10).json()["count"]
    assert page["count"] == expected and all(r["component"] == component for r in page["data"])
