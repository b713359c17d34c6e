"""Dependencies: what the app's lifespan built, reached by routes as ``Annotated`` aliases.

Everything lives on ``app.state`` (built once per app), never in module globals, so tests
can run several apps side by side.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends
from starlette.requests import HTTPConnection

from core.api.security import Principal, PrincipalDep, get_principal
from core.config import Settings
from core.engine_protocol import ModelEngine
from core.errors import NotReady
from core.runs.events import EventBus
from core.runs.executor import Executor
from core.runs.service import RunService
from core.store.db import Store


def _state(connection: HTTPConnection, name: str) -> Any:
    try:
        return getattr(connection.app.state, name)
    except AttributeError:
        raise NotReady(f"server is not ready: {name} is not available yet") from None


def get_settings(connection: HTTPConnection) -> Settings:
    settings: Settings = _state(connection, "settings")
    return settings


def get_store(connection: HTTPConnection) -> Store:
    store: Store = _state(connection, "store")
    return store


def get_run_service(connection: HTTPConnection) -> RunService:
    service: RunService = _state(connection, "run_service")
    return service


def get_event_bus(connection: HTTPConnection) -> EventBus:
    bus: EventBus = _state(connection, "event_bus")
    return bus


def get_executor(connection: HTTPConnection) -> Executor:
    executor: Executor = _state(connection, "executor")
    return executor


def get_engine(connection: HTTPConnection) -> ModelEngine | None:
    """The shared model engine, or None when the app runs without one (``no_engine``)."""
    engine: ModelEngine | None = _state(connection, "engine")
    return engine


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
RunServiceDep = Annotated[RunService, Depends(get_run_service)]
EventBusDep = Annotated[EventBus, Depends(get_event_bus)]
ExecutorDep = Annotated[Executor, Depends(get_executor)]
EngineDep = Annotated[ModelEngine | None, Depends(get_engine)]

__all__ = [
    "EngineDep",
    "EventBusDep",
    "ExecutorDep",
    "Principal",
    "PrincipalDep",
    "RunServiceDep",
    "SettingsDep",
    "StoreDep",
    "get_engine",
    "get_event_bus",
    "get_executor",
    "get_principal",
    "get_run_service",
    "get_settings",
    "get_store",
]
