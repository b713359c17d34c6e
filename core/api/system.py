"""System routes: ``/health``, ``/ready``, ``/info``, ``/stats`` and ``/metrics``.

``/health`` is liveness only (no store, no engine: it must stay fast while the engine is
saturated). Everything that touches the store, the file system or psutil runs in a worker
thread.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
import time
from importlib import metadata
from typing import Any, Literal

import psutil
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from core.api.deps import EngineDep, PrincipalDep, SettingsDep, StoreDep
from core.api.metrics import AppMetrics, iter_routes, runs_by_status
from core.engine_protocol import ModelEngine
from core.errors import ErrorResponse, NotReady
from core.peers import peer_status

_PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    store: bool
    engine: bool | None  # None: this process runs without an engine


class ModelSummary(BaseModel):
    name: str
    parameters: int
    size_bytes: int
    loaded: bool  # a scheduler is running for it in this process
    description: str = ""


class Features(BaseModel):
    auth: bool
    rate_limiting: bool
    cors: bool
    metrics: bool = True
    openai: bool  # /v1 routes are served
    dashboard: bool  # /ui is served
    engine: bool


class Peer(BaseModel):
    component: str
    url: str
    reachable: bool  # its /health answered 200 within a short timeout
    latency_ms: float | None = None
    error: str | None = None


class Info(BaseModel):
    name: Literal["hatchery"] = "hatchery"
    version: str
    python: str
    torch: str | None
    torch_threads: int | None  # intra-op CPU threads (None: torch not loaded in this process)
    device: str
    dtype: str
    default_model: str
    models: list[ModelSummary]
    executor: str
    components: list[str]
    peers: list[Peer] = Field(description="The other component servers (services.*).")
    features: Features


class ProcessStats(BaseModel):
    pid: int
    uptime_s: float
    cpu_percent: float = Field(description="Since the previous /stats call (0 on the first).")
    cpu_user_s: float
    cpu_system_s: float
    memory_rss_bytes: int
    memory_percent: float
    threads: int
    cpu_count: int | None


class EngineStats(BaseModel):
    ready: bool
    models: dict[str, dict[str, Any]]  # per model: the scheduler's statistics
    totals: dict[str, float]  # running, waiting, prefilling, requests, tokens, tokens_per_s


class Stats(BaseModel):
    process: ProcessStats
    engine: EngineStats | None  # None: this process runs without an engine
    runs: dict[str, dict[str, int]]  # component -> status -> count (the caller's own runs)


def build_system_router() -> APIRouter:
    router = APIRouter(tags=["system"])

    @router.get("/health", operation_id="health")
    async def health() -> Health:
        # Liveness only: no database, no engine, nothing that can block behind real work.
        return Health()

    @router.get("/ready", operation_id="ready", responses={503: {"model": ErrorResponse}})
    async def ready(request: Request, store: StoreDep, engine: EngineDep) -> Readiness:
        store_ok = await run_in_threadpool(store.ping)
        engine_ok = await run_in_threadpool(_engine_ready, engine)
        failing = [name for name, ok in (("store", store_ok), ("engine", engine_ok)) if ok is False]
        executor = getattr(request.app.state, "executor", None)
        executor_problem = executor.unavailable_reason() if executor is not None else None
        if failing or executor_problem:
            reasons = [f"{', '.join(failing)} unavailable"] if failing else []
            raise NotReady("not ready: " + "; ".join([*reasons, *filter(None, [executor_problem])]))
        return Readiness(store=store_ok, engine=engine_ok)

    @router.get("/info", operation_id="info")
    async def info(request: Request, settings: SettingsDep, engine: EngineDep) -> Info:
        models = await run_in_threadpool(_model_summaries, engine)
        peers = await run_in_threadpool(peer_status, settings)
        return Info(
            version=request.app.version,
            python=platform.python_version(),
            torch=_distribution_version("torch"),
            torch_threads=_torch_threads(),
            device=settings.model.device if engine is None else str(engine.registry.device),
            dtype=settings.model.dtype,
            default_model=settings.model.default,
            models=models,
            executor=settings.executor.kind,
            components=[spec.name for spec in getattr(request.app.state, "components", ())],
            peers=[Peer.model_validate(peer) for peer in peers],
            features=_features(request, engine),
        )

    @router.get("/stats", operation_id="stats")
    async def stats(
        request: Request, store: StoreDep, engine: EngineDep, principal: PrincipalDep
    ) -> Stats:
        process = await run_in_threadpool(_process_stats, request.app.state)
        count = functools.partial(runs_by_status, store, owner=principal.visible_to)
        runs: dict[str, dict[str, int]] = {}
        for (component, status), number in (await run_in_threadpool(count)).items():
            runs.setdefault(component, {})[status] = number
        snapshot = None if engine is None else await run_in_threadpool(engine.stats)
        return Stats(
            process=process,
            engine=None if snapshot is None else EngineStats.model_validate(snapshot),
            runs=runs,
        )

    @router.get(
        "/metrics",
        operation_id="metrics",
        response_class=Response,
        responses={200: {"content": {_PROMETHEUS_TEXT: {}}, "description": "Prometheus text"}},
    )
    async def metrics(request: Request) -> Response:
        registry: AppMetrics | None = getattr(request.app.state, "metrics", None)
        if registry is None:
            raise NotReady("metrics are not set up on this app")
        body = await run_in_threadpool(registry.exposition)  # queries the store
        return Response(body, media_type=_PROMETHEUS_TEXT)

    return router


def _engine_ready(engine: ModelEngine | None) -> bool | None:
    return None if engine is None else engine.is_ready()


def _distribution_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _torch_threads() -> int | None:
    torch = sys.modules.get("torch")  # never import torch just to answer /info
    return int(torch.get_num_threads()) if torch is not None else None


def _model_summaries(engine: ModelEngine | None) -> list[ModelSummary]:
    """The engine registry's models (reads their config files: blocking)."""
    if engine is None:
        return []
    registry, loaded = engine.registry, set(engine.loaded_models())
    return [
        ModelSummary(
            name=model.name,
            parameters=model.config.parameter_count(),
            size_bytes=model.size_bytes,
            loaded=model.name in loaded,
            description=str(model.metadata.get("description", "")),
        )
        for model in registry.list()
    ]


def _features(request: Request, engine: ModelEngine | None) -> Features:
    settings = request.app.state.settings
    paths = {route.path for route in iter_routes(request.app)}
    return Features(
        auth=settings.auth.enabled,
        rate_limiting=settings.rate_limiting.enabled,
        cors=bool(settings.cors.allow_origins),
        openai=any(path.startswith("/v1/") for path in paths),
        dashboard="/ui/" in getattr(request.app.state, "public_files", {}),
        engine=engine is not None,
    )


def _process_stats(state: Any) -> ProcessStats:
    # One Process object per app: cpu_percent() measures since the previous call on it.
    process: psutil.Process | None = getattr(state, "process", None)
    if process is None:
        process = state.process = psutil.Process(os.getpid())
    with process.oneshot():
        cpu = process.cpu_times()
        memory = process.memory_info()
        return ProcessStats(
            pid=process.pid,
            uptime_s=round(time.time() - process.create_time(), 3),
            cpu_percent=process.cpu_percent(None),
            cpu_user_s=cpu.user,
            cpu_system_s=cpu.system,
            memory_rss_bytes=memory.rss,
            memory_percent=round(process.memory_percent(), 3),
            threads=process.num_threads(),
            cpu_count=psutil.cpu_count(),
        )
