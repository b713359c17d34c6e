"""System routes: ``/health`` (liveness) and ``/ready`` (readiness)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from core.api.deps import EngineDep, StoreDep
from core.errors import ErrorResponse, NotReady


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    store: bool
    engine: bool | None  # None: this process runs without an engine


def build_system_router() -> APIRouter:
    router = APIRouter(tags=["system"])

    @router.get("/health", operation_id="health")
    async def health() -> Health:
        # Liveness only: no database, no engine, nothing that can block behind real work.
        return Health()

    @router.get("/ready", operation_id="ready", responses={503: {"model": ErrorResponse}})
    async def ready(store: StoreDep, engine: EngineDep) -> Readiness:
        store_ok = await run_in_threadpool(store.ping)
        engine_ok = await run_in_threadpool(_engine_ready, engine)
        failing = [name for name, ok in (("store", store_ok), ("engine", engine_ok)) if ok is False]
        if failing:
            raise NotReady(f"not ready: {', '.join(failing)} unavailable")
        return Readiness(store=store_ok, engine=engine_ok)

    return router


def _engine_ready(engine: Any) -> bool | None:
    if engine is None:
        return None
    is_ready = getattr(engine, "is_ready", None)
    return bool(is_ready()) if callable(is_ready) else True
