"""The app factory every server uses: a component alone, or the unified server.

A component only *declares* itself (``ComponentSpec``: name, request and result models, job
functions, extra routers); ``create_base_app`` wires the convention routes, the system routes,
error handling, middleware and a lifespan that builds the engine, store, event bus, run service
and executor once, on ``app.state``, reached through the dependencies in ``core.api.deps``.

Requests pass the middleware in this order (outermost first)::

    RequestId -> HttpMetrics -> CORS -> PublicFiles -> Auth -> RateLimit -> BodySizeLimit
        -> SubmissionContext -> app

so every answer carries a request id and is counted (refusals too), CORS preflights and the
dashboard shell need no key, rate limiting knows the caller's key, and request validation sees
this server's settings and address (``core.api.submission``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from pydantic import BaseModel

from core.api.docs import build_docs_router, docs_asset_files
from core.api.errors import install_error_handlers
from core.api.metrics import AppMetrics, HttpMetricsMiddleware
from core.api.middleware import (
    BodySizeLimitMiddleware,
    PublicFilesMiddleware,
    RequestIdMiddleware,
    install_request_id_in_logs,
)
from core.api.openapi import install_openapi
from core.api.ratelimit import AuthFailureLimiter, RateLimiter, RateLimitMiddleware
from core.api.security import AuthMiddleware, KeyRing
from core.api.submission import SubmissionContextMiddleware
from core.api.system import build_system_router
from core.config import Settings
from core.deployment import check_exposure
from core.engine_protocol import EngineFactory, ModelEngine
from core.errors import ConfigError
from core.runs.context import JobFn
from core.runs.events import EventBus
from core.runs.executor import JobTable, build_executor
from core.runs.router import build_all_runs_router, build_run_router, request_parser
from core.runs.service import RunService
from core.runs.watch import StoreWatcher
from core.store.db import Store

logger = logging.getLogger(__name__)

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class ComponentSpec:
    """Everything a component declares; the platform does the rest.

    ``requests``: one request model, or a union discriminated on ``kind``.
    ``result_model``: one result model, or one per kind.
    ``jobs``: kind -> ``job(context, request) -> result``.
    ``routers``: the component's own extra routes, all under ``/api/{name}`` (e.g.
    ``GET /api/test/suites``).
    ``root_routers``: its routes outside ``/api/{name}`` (the Generator's OpenAI-compatible
    ``/v1/*``, ``/tokenize``, ``/detokenize``), declared apart so a reader of the spec sees
    every path the component claims at the top of the URL space.
    """

    name: str
    requests: Any
    result_model: type[BaseModel] | Mapping[str, type[BaseModel]]
    jobs: Mapping[str, JobFn]
    routers: Sequence[APIRouter] = ()
    root_routers: Sequence[APIRouter] = ()

    def __post_init__(self) -> None:
        prefix = f"/api/{self.name}/"
        outside = [path for path in _paths(self.routers) if not path.startswith(prefix)]
        if outside:
            raise ValueError(f"{self.name}: {outside} are outside {prefix}: use root_routers")
        inside = [path for path in _paths(self.root_routers) if path.startswith(prefix)]
        if inside:
            raise ValueError(f"{self.name}: {inside} are under {prefix}: use routers")

    def job_table(self) -> JobTable:
        return JobTable(component=self.name, parse=request_parser(self.requests), jobs=self.jobs)


def _paths(routers: Sequence[APIRouter]) -> list[str]:
    # A router included into one of these has no single path; no component nests routers.
    paths = (getattr(route, "path", None) for router in routers for route in router.routes)
    return [path for path in paths if isinstance(path, str)]


def no_engine(_settings: Settings) -> None:
    """An engine factory for servers (and tests) that run without a model engine."""
    return None


def _default_engine_factory() -> EngineFactory:
    try:
        from core.engine import build_engine
    except ImportError:
        logger.info("core.engine.build_engine is not available; running without an engine")
        return no_engine
    factory: EngineFactory = build_engine
    return factory


def package_version() -> str:
    try:
        return metadata.version("hatchery")
    except metadata.PackageNotFoundError:  # running from a source tree that was not installed
        return "0.0.0+unknown"


def create_base_app(
    settings: Settings,
    *,
    components: Sequence[ComponentSpec],
    engine: ModelEngine | None = None,
    engine_factory: EngineFactory | None = None,
    title: str = "Hatchery",
    version: str | None = None,
    event_queue_size: int = 1000,
    ping_interval_s: float = 15.0,
    stop_grace_s: float | None = None,
    include_all_runs: bool = True,
    routers: Sequence[APIRouter] = (),
    public_files: Mapping[str, Path] | None = None,
    public_redirects: Mapping[str, str] | None = None,
) -> FastAPI:
    """A FastAPI app serving ``components`` with the whole run convention.

    ``engine``: the shared model engine; when None it is built at start-up by
    ``engine_factory`` (default: ``core.engine.build_engine`` if present, else no engine),
    which is handed the app's metrics observer when it takes an ``observer`` argument.
    ``routers``: app-level routes that belong to no component's run convention (``/v1``).
    ``public_files`` / ``public_redirects``: static files served without a key (the dashboard
    shell; see ``PublicFilesMiddleware``). ``stop_grace_s`` defaults to
    ``executor.grace_s``.
    """
    install_request_id_in_logs()
    names = [spec.name for spec in components]
    if len(set(names)) != len(names):
        raise ValueError(f"component names must be unique: {names}")
    lifespan = _make_lifespan(
        engine=engine,
        engine_factory=engine_factory,
        event_queue_size=event_queue_size,
        stop_grace_s=settings.executor.grace_s if stop_grace_s is None else stop_grace_s,
    )
    # /docs and /redoc come from build_docs_router: FastAPI's own load their assets from a CDN.
    app = FastAPI(
        title=title,
        version=version or package_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.components = tuple(components)
    app.state.metrics = AppMetrics(app.state)
    public_files = {**docs_asset_files(), **(public_files or {})}
    app.state.public_files = public_files
    app.state.rate_limiter = (
        RateLimiter.from_settings(settings.rate_limiting)
        if settings.rate_limiting.enabled
        else None
    )
    app.state.auth_failures = (
        AuthFailureLimiter(
            per_minute=settings.auth.max_failures_per_minute,
            storage=settings.rate_limiting.storage,
        )
        if settings.auth.enabled
        else None
    )
    install_error_handlers(app)
    install_openapi(app, settings)
    # Whether this app answers /v1 itself decides where runs send their OpenAI requests.
    own = [*routers, *(extra for spec in components for extra in spec.root_routers)]
    app.state.serves_openai = any(path.startswith("/v1/") for path in _paths(own))
    _add_middleware(app, settings, public_files, public_redirects or {})
    app.include_router(build_system_router())
    app.include_router(build_docs_router(title))
    for extra in routers:
        app.include_router(extra)
    for spec in components:
        # A component's own routes go first: the first matching route serves a request, and
        # e.g. /api/benchmark/results/{id}.csv must win over the convention's /results/{run_id}.
        for extra in (*spec.routers, *spec.root_routers):
            app.include_router(extra)
        router = build_run_router(
            spec.name,
            spec.requests,
            spec.result_model,
            spec.jobs,
            ping_interval_s=ping_interval_s,
        )
        app.include_router(router)
    if include_all_runs:
        app.include_router(build_all_runs_router())
    return app


def _add_middleware(
    app: FastAPI,
    settings: Settings,
    public_files: Mapping[str, Path],
    public_redirects: Mapping[str, str],
) -> None:
    # add_middleware wraps what is there: added innermost first (see the module docstring).
    app.add_middleware(
        SubmissionContextMiddleware, settings=settings, serves_openai=app.state.serves_openai
    )
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.server.max_body_bytes)
    if app.state.rate_limiter is not None:
        app.add_middleware(RateLimitMiddleware, limiter=app.state.rate_limiter)
    app.add_middleware(
        AuthMiddleware,
        keyring=KeyRing.from_settings(settings.auth),
        failures=app.state.auth_failures,
    )
    if public_files or public_redirects:
        app.add_middleware(PublicFilesMiddleware, files=public_files, redirects=public_redirects)
    if settings.cors.allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors.allow_origins,
            allow_credentials=settings.cors.allow_credentials,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID", "Retry-After", "Location"],
        )
    app.add_middleware(HttpMetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(RequestIdMiddleware)


def _make_lifespan(
    *,
    engine: ModelEngine | None,
    engine_factory: EngineFactory | None,
    event_queue_size: int,
    stop_grace_s: float,
) -> Callable[[FastAPI], Any]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings: Settings = app.state.settings
        try:
            check_exposure(settings)
        except ConfigError as exc:
            logger.error("%s", exc)  # uvicorn's own message does not say why start-up failed
            raise
        _warn_if_exposed(settings)
        if settings.model.threads is not None:
            await to_thread.run_sync(_set_torch_threads, settings.model.threads)
        owns_engine = engine is None
        factory = engine_factory or _default_engine_factory()
        if owns_engine:
            observer = app.state.metrics.engine
            app.state.engine = await to_thread.run_sync(_build_engine, factory, settings, observer)
            _preload_in_background(app.state.engine)
        else:
            app.state.engine = engine
        store = Store(settings.store.url)
        await to_thread.run_sync(store.create_schema)
        bus = EventBus(queue_size=event_queue_size)
        bus.bind(asyncio.get_running_loop())
        service = RunService(store=store, bus=bus)
        tables = {spec.name: spec.job_table() for spec in app.state.components}
        executor = build_executor(
            settings=settings,
            service=service,
            tables=tables,
            engine=app.state.engine,
            engine_factory=factory,
        )
        app.state.store, app.state.event_bus = store, bus
        app.state.run_service, app.state.executor = service, executor
        watcher = StoreWatcher(store, bus)
        watcher.start()
        await to_thread.run_sync(executor.start)
        try:
            yield
        finally:
            await to_thread.run_sync(executor.stop, stop_grace_s)
            await to_thread.run_sync(watcher.stop)
            await to_thread.run_sync(store.dispose)
            for limiter in (app.state.rate_limiter, app.state.auth_failures):
                if limiter is not None:
                    await limiter.close()
            if owns_engine:
                await to_thread.run_sync(_close, app.state.engine)

    return lifespan


def _build_engine(factory: EngineFactory, settings: Settings, observer: Any) -> ModelEngine | None:
    """Call the factory, handing it the metrics observer when it can take one."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable: call it plainly
        parameters = {}  # type: ignore[assignment]
    if "observer" in parameters:
        return factory(settings, observer=observer)  # type: ignore[call-arg]
    return factory(settings)


def _set_torch_threads(threads: int) -> None:
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
        logger.info("torch uses %d CPU threads", threads)


def _preload_in_background(engine: ModelEngine | None) -> None:
    """Load the preload models without holding up start-up: /ready says 503 until done."""
    if engine is None:
        return

    def run() -> None:
        try:
            engine.preload()
        except Exception:
            logger.exception("preloading models failed; they load on first use instead")

    threading.Thread(target=run, name="hatchery-preload", daemon=True).start()


def _close(engine: ModelEngine | None) -> None:
    if engine is not None:
        engine.shutdown()


def _warn_if_exposed(settings: Settings) -> None:
    if settings.server.host not in _LOOPBACK and not settings.auth.enabled:
        logger.warning(
            "listening on %s with auth disabled (server.allow_insecure): anyone who can "
            "reach it can use it",
            settings.server.host,
        )
