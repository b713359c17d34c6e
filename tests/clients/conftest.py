"""Fixtures for the client tests: both twins, and real servers to point them at.

``standin`` is a real uvicorn server running the real run framework with three components
named ``test``, ``generator`` and ``benchmark`` whose jobs are the framework's small sample
jobs (sleep / chatty / fail): fast and controllable, for everything the convention does the
same way for every component (status, results, lists, cancel, monitors, WebSockets, errors).
What is specific to each component runs against the real component apps (``test_real.py``).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.api.app import create_base_app, no_engine
from tests.clients.twins import client_factory
from tests.conftest import engine_settings, make_settings
from tests.support.poll import poll_until
from tests.support.sample_component import SAMPLE
from tests.support.server import LiveServer, serve
from unified_api.components import COMPONENTS as REGISTRY

COMPONENTS = tuple(REGISTRY)
TERMINAL = {"succeeded", "failed", "cancelled"}


def standin_app(store_url: str, **overrides: Any) -> Any:
    specs = [dataclasses.replace(SAMPLE, name=name) for name in COMPONENTS]
    settings = make_settings(
        store_url, **{"executor.concurrency": dict.fromkeys(COMPONENTS, 2)} | overrides
    )
    return create_base_app(settings, components=specs, engine_factory=no_engine, stop_grace_s=0.5)


@pytest.fixture(scope="session")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    url = f"sqlite:///{tmp_path_factory.mktemp('clients') / 'hatchery.db'}"
    with serve(standin_app(url)) as server:
        yield server


@pytest.fixture(params=["sync", "async"])
def client_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def make_client(client_kind: str) -> Iterator[Callable[..., Any]]:
    """``make_client(url, **options)``: an ApiClient, or an AsyncApiClient driven to completion."""
    make, close_all = client_factory(client_kind)
    yield make
    close_all()


@pytest.fixture
def client(make_client: Callable[..., Any], standin: LiveServer) -> Any:
    # Stand-in results are not the components' results: keep them as dicts.
    return make_client(standin.url, timeout=10.0, typed_results=False)


def submit(server_url: str, component: str, body: dict[str, Any]) -> str:
    """Start a stand-in run directly over HTTP; returns its id."""
    response = httpx.post(f"{server_url}/api/{component}/run", json=body, timeout=10)
    assert response.status_code == 202, response.text
    run_id: str = response.json()["id"]
    return run_id


def wait_until(server_url: str, component: str, run_id: str, done: Callable[[dict], bool]) -> dict:
    run: dict[str, Any] = poll_until(
        lambda: httpx.get(f"{server_url}/api/{component}/status/{run_id}", timeout=10).json(),
        done,
        timeout=20,
        what=f"{component} run {run_id}",
    )
    return run


# Real components ---------------------------------------------------------------------------


def real_settings(base: Path, models_dir: Path, **overrides: Any) -> Any:
    """Engine settings on a private copy of the test models (runs here create models)."""
    models = base / "models"
    if not models.exists():
        shutil.copytree(models_dir, models)
    return engine_settings(f"sqlite:///{base / 'hatchery.db'}", models, **overrides)


@pytest.fixture(scope="session")
def real(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[LiveServer]:
    """The unified server with every component in this checkout, a real engine, bdh-nano."""
    from unified_api.app import create_app

    settings = real_settings(tmp_path_factory.mktemp("real"), models_dir)
    with serve(create_app(settings)) as server:
        yield server
