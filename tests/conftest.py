"""Shared fixtures: store URLs (SQLite and real PostgreSQL) and a live uvicorn server.

PostgreSQL tests use ``HATCHERY_TEST_DATABASE_URL`` and skip without it (or when that server
is unreachable). With ``HATCHERY_REQUIRE_POSTGRES`` set (``.ci/run`` sets it) they fail
instead: CI must not go green by skipping. Each PostgreSQL test gets its own schema (via
``search_path``), dropped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import pytest
from fastapi import FastAPI
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from core.config import Settings, load_settings
from core.store.db import Store
from tests.support.ray_cluster import ray_address  # noqa: F401  (a session fixture)
from tests.support.server import LiveServer

PG_ENV = "HATCHERY_TEST_DATABASE_URL"
REQUIRE_PG_ENV = "HATCHERY_REQUIRE_POSTGRES"


def postgres_required() -> bool:
    return os.environ.get(REQUIRE_PG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def without_postgres(reason: str) -> NoReturn:
    """Skip a PostgreSQL test, or fail it where PostgreSQL is mandatory."""
    if postgres_required():
        pytest.fail(f"{reason} ({REQUIRE_PG_ENV} is set: PostgreSQL tests must run)")
    pytest.skip(reason)


def postgres_base_url() -> str:
    """``HATCHERY_TEST_DATABASE_URL``; skips (or fails, see above) when it is unset."""
    base = os.environ.get(PG_ENV)
    if not base:
        without_postgres(f"{PG_ENV} is not set: PostgreSQL tests skipped")
    return base


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path / 'hatchery.db'}"


@contextlib.contextmanager
def postgres_schema(base: str | None = None) -> Iterator[str]:
    """A store URL on a fresh PostgreSQL schema (``search_path``), dropped afterwards."""
    base = base or postgres_base_url()
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, poolclass=NullPool)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except OperationalError as exc:
        admin.dispose()
        without_postgres(f"PostgreSQL at {make_url(base).render_as_string()} is unreachable: {exc}")
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_schema() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest) -> str:
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    store = Store(store_url)
    store.create_schema()
    try:
        yield store
    finally:
        store.dispose()


def make_settings(store_url: str, **overrides: Any) -> Settings:
    """Test settings: the given store, fast heartbeats, two sample jobs at a time."""
    base: dict[str, Any] = {
        "store.url": store_url,
        "executor.heartbeat_s": 0.5,
        "executor.concurrency": {"sample": 2},
    }
    return load_settings(**(base | overrides))


@pytest.fixture
def live_server() -> Iterator[Callable[[FastAPI], LiveServer]]:
    """Start real uvicorn servers for apps: ``server = live_server(app); server.url``."""
    servers: list[LiveServer] = []

    def start(app: FastAPI) -> LiveServer:
        server = LiveServer(app)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        server.stop()


SHIPPED_MODEL = "bdh-shakespeare"
NANO_MODEL = "bdh-nano"


def build_nano_model(seed: int = 0, scale: float = 5.0) -> Any:
    """bdh-nano with weights scaled up so attention matters (std 0.02 is near-uniform)."""
    import dataclasses

    import torch

    from core.engine import BDH
    from core.engine.training import TEMPLATES

    torch.manual_seed(seed)
    model = BDH(dataclasses.replace(TEMPLATES["bdh-nano"].config, dropout=0.0))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(std=0.02 * scale)
    return model.eval()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A models directory with `bdh-nano` (random weights) and a copy of the shipped model.

    Tests that change models copy this directory first; it is shared by the whole session.
    """
    import shutil
    from pathlib import Path

    from core.engine import ModelRegistry

    directory = tmp_path_factory.mktemp("models")
    registry = ModelRegistry(directory)
    registry.register(NANO_MODEL, build_nano_model(), {"description": "test model"})
    shipped = Path(__file__).resolve().parents[1] / "models" / SHIPPED_MODEL
    if shipped.is_dir():
        shutil.copytree(shipped, directory / SHIPPED_MODEL)
    return directory


def engine_settings(store_url: str, models_dir: Any, **overrides: Any) -> Settings:
    """Settings for servers with a real engine on the test models (bdh-nano preloaded)."""
    base: dict[str, Any] = {
        "store.url": store_url,
        "executor.heartbeat_s": 0.5,
        "model.models_dir": str(models_dir),
        "model.default": NANO_MODEL,
        "model.preload": [NANO_MODEL],
        "data_dir": str(models_dir.parent / "data"),
    }
    return load_settings(**(base | overrides))
