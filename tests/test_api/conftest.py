"""Fixtures: a models directory with the test models, and a real Test server on it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from test_api.app import create_app
from tests.conftest import engine_settings
from tests.support.server import LiveServer, serve
from tests.test_api.models import build_test_models


@pytest.fixture(scope="session")
def component_models(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's models plus this component's test models; data beside it."""
    root = tmp_path_factory.mktemp("test-component")
    directory = root / "models"
    shutil.copytree(models_dir, directory)
    build_test_models(directory, root / "data")
    return directory


def component_settings(models: Path, db: Path, **overrides: Any) -> Any:
    return engine_settings(f"sqlite:///{db}", models, **overrides)


@pytest.fixture(scope="module")
def server(
    component_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    db = tmp_path_factory.mktemp("test-api") / "hatchery.db"
    with serve(create_app(component_settings(component_models, db))) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client
