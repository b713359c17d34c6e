"""The Ray side of the Ray executor: one detached actor runs one attempt of one run.

The actor is *detached* so that it outlives the API process that dispatched it: a restarted
API serves the run's status and events from the store while the actor goes on writing them.
Inside, the attempt is the same as a local one (``execute_attempt``): the actor opens its own
store connection and its own engine (models load from the shared models directory on first
use), keeps its lease alive (heartbeats, cancel flag every 0.25 s) and records the outcome.
When the attempt is over, the actor exits and gives its resources back.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

from core.config import Settings
from core.engine_protocol import EngineFactory, ModelEngine
from core.runs.attempt import Held, JobTable, LeaseKeeper, execute_attempt
from core.runs.context import StopSignal
from core.runs.events import EventBus
from core.runs.service import RunService
from core.store.db import Store
from core.store.models import RunStatus

logger = logging.getLogger(__name__)

RAY_NAMESPACE = "hatchery"


@dataclass(frozen=True)
class AttemptSpec:
    """Everything a Ray worker needs to run one attempt; sent to it by value (pickled)."""

    run_id: str
    lease: str
    table: JobTable
    settings: dict[str, Any]  # Settings, dumped with paths made absolute
    engine_factory: EngineFactory  # a module-level function: Ray sends it by reference


def actor_name(run_id: str) -> str:
    return f"hatchery-run-{run_id}"


class AttemptRunner:
    """The actor class (wrapped with ``ray.remote`` by the executor, which imports Ray)."""

    def pid(self) -> int:
        return os.getpid()

    def run(self, spec: AttemptSpec) -> str:
        try:
            return run_attempt(spec)
        finally:
            _exit_actor()


def run_attempt(spec: AttemptSpec) -> str:
    """Run the attempt; returns how it ended ("skipped" if the lease was gone already)."""
    settings = Settings.model_validate(spec.settings)
    store = Store(settings.store.url)
    service = RunService(store=store, bus=EventBus())  # an unbound bus: the store announces
    engine: ModelEngine | None = None
    try:
        run = service.get(run_id=spec.run_id)
        if run.status != RunStatus.running or run.worker_id != spec.lease:
            return "skipped"
        stop = StopSignal()
        keeper = LeaseKeeper(
            service=service,
            heartbeat_s=settings.executor.heartbeat_s,
            held=lambda: {spec.run_id: Held(spec.lease, stop)},
        )
        keeper.start()
        try:
            where = {"node": socket.gethostname(), "pid": os.getpid(), "attempt": run.attempts}
            message = f"attempt {run.attempts} runs on Ray node {where['node']}, pid {where['pid']}"
            service.emit(
                run_id=run.id,
                type="log",
                data={"level": "info", "message": message, **where},
                lease=spec.lease,
            )
            engine = spec.engine_factory(settings)
            execute_attempt(
                run=run,
                lease=spec.lease,
                stop=stop,
                table=spec.table,
                service=service,
                settings=settings,
                engine=engine,
            )
        finally:
            keeper.close()
        final = service.get(run_id=spec.run_id)
        return str(final.status)
    finally:
        _close_engine(engine)
        store.dispose()


def _close_engine(engine: ModelEngine | None) -> None:
    if engine is None:
        return
    try:
        engine.shutdown()
    except Exception:
        logger.warning("closing the worker's engine failed", exc_info=True)


def _exit_actor() -> None:
    import ray

    ray.actor.exit_actor()
