"""Executors: where accepted runs actually run (DESIGN §4).

``Executor`` is the one interface the rest of the platform sees (submit, cancel, start, stop);
components only declare job tables, so a Ray executor can replace the local one without any
component changing.

``LocalExecutor`` runs jobs in worker threads, never on the event loop. It *claims* queued
runs from the store rather than keeping a queue in memory, so a run accepted before a crash
runs after the restart. Claimed runs carry a lease (``worker_id``) and a heartbeat; a run
whose heartbeat goes stale is re-queued (or failed with ``interrupted`` once out of attempts)
by whichever executor notices first.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from core.config import Settings
from core.engine_protocol import EngineFactory, ModelEngine
from core.runs.attempt import Held, JobTable, LeaseKeeper, execute_attempt
from core.runs.context import StopReason, StopSignal
from core.runs.service import RunService
from core.store.models import Run, RunStatus, utcnow

logger = logging.getLogger(__name__)

STALE_AFTER_HEARTBEATS = 3  # a run is presumed orphaned after this many missed heartbeats

__all__ = ["STALE_AFTER_HEARTBEATS", "Executor", "JobTable", "LocalExecutor", "build_executor"]


class Executor(abc.ABC):
    @abc.abstractmethod
    def start(self) -> None:
        """Recover runs orphaned by a previous process, then begin claiming queued runs."""

    @abc.abstractmethod
    def stop(self, grace_s: float = 10.0) -> None:
        """Stop claiming; give running jobs ``grace_s`` to finish, then re-queue the rest."""

    @abc.abstractmethod
    def submit(self, run_id: str) -> None:
        """A run was queued: pick it up soon. (Never blocks.)"""

    @abc.abstractmethod
    def cancel(self, run_id: str) -> bool:
        """Signal a running job to stop; True if this executor was running it."""

    def unavailable_reason(self) -> str | None:
        """Why this executor cannot run jobs now (``/ready`` answers 503 with it), or None."""
        return None


def recover_stale(service: RunService, settings: Settings) -> bool:
    """Re-queue (or fail) runs whose holder stopped heart-beating; True if any were queued."""
    heartbeat_s = settings.executor.heartbeat_s
    stale_before = utcnow() - timedelta(seconds=heartbeat_s * STALE_AFTER_HEARTBEATS)
    recovered = service.recover_stale(
        stale_before=stale_before, max_attempts=settings.executor.max_attempts
    )
    return any(run.status == RunStatus.queued for run in recovered)


@dataclass
class _Active:
    run_id: str
    component: str
    lease: str
    stop: StopSignal = field(default_factory=StopSignal)
    thread: threading.Thread | None = None


class LocalExecutor(Executor):
    def __init__(
        self,
        *,
        service: RunService,
        tables: Mapping[str, JobTable],
        settings: Settings,
        engine: ModelEngine | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.service = service
        self.tables = dict(tables)
        self.settings = settings
        self.engine = engine
        self.poll_s = poll_s
        self.executor_id = uuid.uuid4().hex[:12]
        self._limits = {name: settings.executor.concurrency.get(name, 1) for name in self.tables}
        self._active: dict[str, _Active] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()  # no more claims
        self._keeper = LeaseKeeper(
            service=service,
            heartbeat_s=settings.executor.heartbeat_s,
            held=self._held,
            after_beat=self._recover_while_running,
        )
        self._dispatcher: threading.Thread | None = None

    # Executor interface -------------------------------------------------------------

    def start(self) -> None:
        self._recover()
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop, name="hatchery-dispatch", daemon=True
        )
        self._dispatcher.start()
        self._keeper.start()
        logger.info("local executor %s started: %s", self.executor_id, self._limits)

    def submit(self, run_id: str) -> None:
        self._wake.set()

    def cancel(self, run_id: str) -> bool:
        with self._lock:
            active = self._active.get(run_id)
        if active is None:
            return False
        active.stop.set(StopReason.cancelled)
        return True

    def stop(self, grace_s: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        deadline = time.monotonic() + grace_s
        for active in self._snapshot():
            if active.thread is not None:
                active.thread.join(max(0.0, deadline - time.monotonic()))
        # Heartbeats went on during the grace period, so no other process took these runs.
        self._keeper.close()
        if self._dispatcher is not None:
            self._dispatcher.join()
        for active in self._snapshot():
            # Still running after the grace period: hand it back to the queue. The attempt is
            # refunded — a clean shutdown is not the job's fault.
            active.stop.set(StopReason.shutdown)
            if self.service.requeue(
                run_id=active.run_id, lease=active.lease, reason="shutdown", refund=True
            ):
                logger.warning("re-queued run %s at shutdown", active.run_id)
        logger.info("local executor %s stopped", self.executor_id)

    @property
    def active_count(self) -> int:
        with self._lock:
            return len(self._active)

    # Claiming -----------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._claim_available()
            except Exception:
                logger.exception("claiming queued runs failed; retrying")
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def _claim_available(self) -> None:
        for component in self.tables:
            while not self._stopping.is_set() and self._has_room(component):
                lease = f"{self.executor_id}-{uuid.uuid4().hex[:8]}"
                run = self.service.claim(component=component, lease=lease)
                if run is None:
                    break
                self._launch(run, lease)

    def _has_room(self, component: str) -> bool:
        with self._lock:
            busy = sum(1 for a in self._active.values() if a.component == component)
        return busy < self._limits[component]

    def _launch(self, run: Run, lease: str) -> None:
        active = _Active(run_id=run.id, component=run.component, lease=lease)
        active.thread = threading.Thread(
            target=self._run_job,
            args=(run, active),
            name=f"hatchery-{run.component}-{run.id[:8]}",
            daemon=True,  # a job that ignores cancellation must not keep the process alive
        )
        with self._lock:
            self._active[run.id] = active
        active.thread.start()

    # Leases and recovery --------------------------------------------------------------

    def _held(self) -> dict[str, Held]:
        return {a.run_id: Held(a.lease, a.stop) for a in self._snapshot()}

    def _recover_while_running(self) -> None:
        if not self._stopping.is_set():
            self._recover()

    def _recover(self) -> None:
        if recover_stale(self.service, self.settings):
            self._wake.set()

    def _snapshot(self) -> list[_Active]:
        with self._lock:
            return list(self._active.values())

    # Running one job ----------------------------------------------------------------

    def _run_job(self, run: Run, active: _Active) -> None:
        try:
            execute_attempt(
                run=run,
                lease=active.lease,
                stop=active.stop,
                table=self.tables[run.component],
                service=self.service,
                settings=self.settings,
                engine=self.engine,
            )
        except Exception:
            logger.exception("run %s: recording its outcome failed", run.id)
        finally:
            with self._lock:
                self._active.pop(run.id, None)
            self._wake.set()  # a slot is free


def build_executor(
    *,
    settings: Settings,
    service: RunService,
    tables: Mapping[str, JobTable],
    engine: ModelEngine | None,
    engine_factory: EngineFactory | None = None,
) -> Executor:
    """The executor ``settings.executor.kind`` names, attached to ``service``.

    ``engine`` serves local jobs; Ray workers build their own with ``engine_factory`` (a
    module-level ``Settings -> engine`` function, sent to them by reference).
    """
    executor: Executor
    if settings.executor.kind == "ray":
        from core.runs.ray_executor import RayExecutor  # imports Ray: only when asked for

        executor = RayExecutor(
            service=service, tables=tables, settings=settings, engine_factory=engine_factory
        )
    else:
        executor = LocalExecutor(service=service, tables=tables, settings=settings, engine=engine)
    service.executor = executor
    return executor
