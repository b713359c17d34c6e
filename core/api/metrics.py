"""Prometheus metrics, one ``CollectorRegistry`` per app (never the global one).

A registry per app keeps several apps in one process (tests, the unified server next to a
component server) from colliding or double-counting. Three kinds of series:

- HTTP: requests and latency by method, route *template* (``/api/test/status/{run_id}``,
  never the raw path, so ids cannot explode the label space) and status; fed by
  ``HttpMetricsMiddleware``.
- Engine, labelled ``model_name`` as vLLM's: time to first token, inter-token latency,
  end-to-end latency, prompt and generation token counters, finished sequences by finish
  reason; fed on the scheduler thread by ``EngineMetrics``, the ``EngineObserver`` handed to
  ``core.engine.build_engine``.
- Scrape-time state: runs by component and status (one grouped query on the store) and the
  engine's gauges (running and waiting requests, running sequences), read when ``/metrics`` is
  scraped — which happens in a
  worker thread, so the store query never runs on the event loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlmodel import col
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.api.middleware import PUBLIC_PATH_KEY
from core.engine_protocol import ModelEngine
from core.store.db import Store
from core.store.models import Run

logger = logging.getLogger(__name__)

UNMATCHED_ROUTE = "<unmatched>"

# Bucket edges in seconds, from a fast CPU step on a tiny model to a long generation.
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def runs_by_status(store: Store, *, owner: str | None = None) -> dict[tuple[str, str], int]:
    """``(component, status) -> count`` in one grouped query (blocking: call off the loop).

    ``owner=None`` counts every owner's runs.
    """
    component, status = col(Run.component), col(Run.status)
    query = select(component, status, func.count()).group_by(component, status)
    if owner is not None:
        query = query.where(col(Run.owner) == owner)
    with store.read_session() as session:
        rows = session.execute(query).all()
    return {(row[0], row[1]): int(row[2]) for row in rows}


class EngineMetrics:
    """The engine observer: scheduler callbacks -> histograms and counters (thread-safe).

    Every series carries vLLM's ``model_name`` label; the engine binds each model's scheduler
    to its own children through `for_model` (a ``core.engine.engine.PerModelObserver``;
    observers are duck-typed, as the scheduler takes any object with some of its callbacks).
    Generated tokens are counted for every request, aborted ones included, and every choice
    that ends is counted by its finish reason.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        label = ["model_name"]
        self.ttft = Histogram(
            "hatchery_time_to_first_token_seconds",
            "Time from submission to the first generated token.",
            label,
            buckets=_TTFT_BUCKETS,
            registry=registry,
        )
        self.inter_token = Histogram(
            "hatchery_inter_token_latency_seconds",
            "Time between consecutive tokens of one sequence.",
            label,
            buckets=_ITL_BUCKETS,
            registry=registry,
        )
        self.e2e = Histogram(
            "hatchery_e2e_request_latency_seconds",
            "Time from submission to the end of a request that finished normally.",
            label,
            buckets=_E2E_BUCKETS,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "hatchery_prompt_tokens",
            "Prompt tokens (bytes) read by prefill.",
            label,
            registry=registry,
        )
        self.generation_tokens = Counter(
            "hatchery_generation_tokens",
            "Tokens generated, by requests however they ended (aborted ones included).",
            label,
            registry=registry,
        )
        self.finished = Counter(
            "hatchery_requests_finished",
            "Sequences (choices) that ended, by finish reason: stop, length, abort, error "
            "(vLLM's request_success_total).",
            [*label, "finished_reason"],
            registry=registry,
        )

    def for_model(self, model: str) -> _ModelMetrics:
        return _ModelMetrics(self, model)


class _ModelMetrics:
    """`EngineMetrics` with the model's label bound, for one scheduler."""

    def __init__(self, metrics: EngineMetrics, model: str) -> None:
        self._metrics, self._model = metrics, model
        self._ttft = metrics.ttft.labels(model)
        self._inter_token = metrics.inter_token.labels(model)
        self._e2e = metrics.e2e.labels(model)
        self._prompt_tokens = metrics.prompt_tokens.labels(model)
        self._generation_tokens = metrics.generation_tokens.labels(model)

    def on_first_token(self, ttft_s: float) -> None:
        self._ttft.observe(ttft_s)

    def on_token(self, inter_token_s: float) -> None:
        self._inter_token.observe(inter_token_s)

    def on_prefill(self, tokens: int) -> None:
        self._prompt_tokens.inc(tokens)

    def on_finish(self, e2e_s: float, prompt_tokens: int, completion_tokens: int) -> None:
        self._e2e.observe(e2e_s)

    def on_request_end(
        self, finish_reasons: list[str], prompt_tokens: int, completion_tokens: int
    ) -> None:
        self._generation_tokens.inc(completion_tokens)
        for reason in finish_reasons:
            self._metrics.finished.labels(self._model, reason).inc()


class _StateCollector(Collector):
    """Series read from the app's store and engine at scrape time."""

    def __init__(self, state: Any) -> None:
        self._state = state  # the app's ``app.state``: store and engine appear in the lifespan

    def describe(self) -> Iterable[Metric]:
        # Without describe() the registry would call collect() on registration.
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        runs, store_up, running, sequences, waiting, ready = families[:6]
        state_memory, state_limit, free_slots = families[6:]
        store: Store | None = getattr(self._state, "store", None)
        if store is not None:
            try:
                counts = runs_by_status(store)
            except Exception:
                logger.warning("metrics: counting runs failed", exc_info=True)
                store_up.add_metric([], 0)
            else:
                store_up.add_metric([], 1)
                for (component, status), count in sorted(counts.items()):
                    runs.add_metric([component, status], count)
        # None before the lifespan built it, or on a server without an engine
        engine: ModelEngine | None = getattr(self._state, "engine", None)
        if engine is not None:
            snapshot = engine.stats()
            ready.add_metric([], 1 if snapshot.get("ready") else 0)
            for model, numbers in snapshot.get("models", {}).items():
                running.add_metric([model], numbers.get("running_requests", 0))
                sequences.add_metric([model], numbers.get("running", 0))
                waiting.add_metric([model], numbers.get("waiting", 0))
                state_memory.add_metric([model], numbers.get("state_memory_in_use", 0))
                state_limit.add_metric([model], numbers.get("max_state_memory", 0))
                free_slots.add_metric([model], numbers.get("free_slots", 0))
        return list(families)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "hatchery_runs",
                "Runs in the store by component and status.",
                labels=["component", "status"],
            ),
            GaugeMetricFamily("hatchery_store_up", "1 when the run store answered the scrape."),
            GaugeMetricFamily(
                "hatchery_engine_running",
                "Requests being generated (a sequence in decode slots), as vLLM counts them.",
                labels=["model_name"],
            ),
            GaugeMetricFamily(
                "hatchery_engine_running_sequences",
                "Sequences (choices) in decode slots.",
                labels=["model_name"],
            ),
            GaugeMetricFamily(
                "hatchery_engine_waiting",
                "Requests queued for admission.",
                labels=["model_name"],
            ),
            GaugeMetricFamily("hatchery_engine_ready", "1 once every preload model is loaded."),
            GaugeMetricFamily(
                "hatchery_engine_state_memory_bytes",
                "Recurrent state held by running and prefilling sequences.",
                labels=["model_name"],
            ),
            GaugeMetricFamily(
                "hatchery_engine_state_memory_limit_bytes",
                "The scheduler's state budget (generation.max_state_memory).",
                labels=["model_name"],
            ),
            GaugeMetricFamily(
                "hatchery_engine_free_slots",
                "Decode slots not taken by admitted sequences: room for new requests.",
                labels=["model_name"],
            ),
        )


class AppMetrics:
    """Every metric of one app, in the app's own registry."""

    def __init__(self, state: Any) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "hatchery_http_requests",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "hatchery_http_request_duration_seconds",
            "HTTP request duration (to the last body byte) by method and route template.",
            ["method", "route"],
            buckets=_HTTP_BUCKETS,
            registry=self.registry,
        )
        self.engine = EngineMetrics(self.registry)
        self.registry.register(_StateCollector(state))

    def exposition(self) -> bytes:
        """The text format (blocking: it queries the store; call it off the event loop)."""
        return generate_latest(self.registry)

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_latency.labels(method, route).observe(seconds)


class HttpMetricsMiddleware:
    """Counts and times every HTTP request, refused ones (401, 413, 429) included."""

    def __init__(self, app: ASGIApp, *, metrics: AppMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.observe_http(scope["method"], route_template(scope), status, elapsed)


def route_template(scope: Scope) -> str:
    """The path template of the route that served (or would have served) the request."""
    route = scope.get("route")
    path = getattr(route, "path", None) or scope.get(PUBLIC_PATH_KEY)
    if isinstance(path, str):
        return path
    # Refused before routing (auth, rate limit, body size): find the route it was meant for,
    # matching a minimal copy of the scope so that routing bookkeeping never leaks back.
    probe: Scope = {
        "type": scope["type"],
        "path": scope["path"],
        "root_path": scope.get("root_path", ""),
        "method": scope.get("method", "GET"),
        "headers": [],
    }
    partial = UNMATCHED_ROUTE
    for candidate in iter_routes(scope.get("app")):
        match, _ = candidate.matches(probe)
        if match is Match.FULL:
            return str(candidate.path)
        if match is Match.PARTIAL and partial == UNMATCHED_ROUTE:
            partial = str(candidate.path)  # the path exists, the method does not (405)
    return partial


def iter_routes(app: Any) -> Iterator[Any]:
    """Every leaf route (with a ``path``) of an app, through included routers at any depth.

    FastAPI may keep included routers nested (``original_router``) rather than copying their
    routes into the app's list.
    """
    yield from _leaf_routes(getattr(getattr(app, "router", None), "routes", ()))


def _leaf_routes(routes: Iterable[Any]) -> Iterator[Any]:
    for route in routes:
        nested = getattr(route, "original_router", None)
        if nested is not None:
            yield from _leaf_routes(nested.routes)
        elif isinstance(getattr(route, "path", None), str):
            yield route
