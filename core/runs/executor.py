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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from core.config import Settings
from core.errors import FeatureUnavailable, PlatformError, RunCancelled
from core.runs.context import JobFn, RunContext, StopReason, StopSignal
from core.runs.service import RunService
from core.store.models import Run, RunStatus, utcnow

logger = logging.getLogger(__name__)

STALE_AFTER_HEARTBEATS = 3  # a run is presumed orphaned after this many missed heartbeats


@dataclass(frozen=True)
class JobTable:
    """What an executor needs to run one component's runs."""

    component: str
    parse: Callable[[dict[str, Any]], Any]  # stored params -> the validated request
    jobs: Mapping[str, JobFn]  # kind -> job function


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
        engine: Any = None,
        poll_s: float = 1.0,
    ) -> None:
        self.service = service
        self.tables = dict(tables)
        self.settings = settings
        self.engine = engine
        self.poll_s = poll_s
        self.executor_id = uuid.uuid4().hex[:12]
        self._heartbeat_s = settings.executor.heartbeat_s
        self._limits = {name: settings.executor.concurrency.get(name, 1) for name in self.tables}
        self._active: dict[str, _Active] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()  # no more claims
        self._closed = threading.Event()  # no more heartbeats (after the grace period)
        self._threads: list[threading.Thread] = []

    # Executor interface -------------------------------------------------------------

    def start(self) -> None:
        self._recover()
        for target, name in (
            (self._dispatch_loop, "dispatch"),
            (self._heartbeat_loop, "heartbeat"),
        ):
            thread = threading.Thread(target=target, name=f"hatchery-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
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
        self._closed.set()
        for thread in self._threads:
            thread.join()
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

    # Heartbeats and recovery --------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self._closed.wait(self._heartbeat_s):
            try:
                self._beat()
                if not self._stopping.is_set():
                    self._recover()
            except Exception:
                logger.exception("heartbeat failed; retrying")

    def _beat(self) -> None:
        actives = {a.run_id: a for a in self._snapshot()}
        held = self.service.heartbeat(leases={rid: a.lease for rid, a in actives.items()})
        for run_id, active in actives.items():
            if run_id not in held:
                active.stop.set(StopReason.lost)
            elif held[run_id]:  # cancel requested, perhaps through another server process
                active.stop.set(StopReason.cancelled)

    def _recover(self) -> None:
        stale_before = utcnow() - timedelta(seconds=self._heartbeat_s * STALE_AFTER_HEARTBEATS)
        recovered = self.service.recover_stale(
            stale_before=stale_before, max_attempts=self.settings.executor.max_attempts
        )
        if any(run.status == RunStatus.queued for run in recovered):
            self._wake.set()

    def _snapshot(self) -> list[_Active]:
        with self._lock:
            return list(self._active.values())

    # Running one job ----------------------------------------------------------------

    def _run_job(self, run: Run, active: _Active) -> None:
        try:
            self._execute(run, active)
        except Exception:
            logger.exception("run %s: recording its outcome failed", run.id)
        finally:
            with self._lock:
                self._active.pop(run.id, None)
            self._wake.set()  # a slot is free

    def _execute(self, run: Run, active: _Active) -> None:
        table = self.tables[run.component]
        context = RunContext(
            run_id=run.id,
            component=run.component,
            kind=run.kind,
            attempt=run.attempts,
            lease=active.lease,
            service=self.service,
            settings=self.settings,
            engine=self.engine,
            stop=active.stop,
        )
        finish = _Finisher(self.service, run.id, active.lease)
        try:
            request = table.parse(run.params)
            job = table.jobs[run.kind]
            result = job(context, request)
        except RunCancelled as exc:
            if active.stop.reason in (StopReason.shutdown, StopReason.lost):
                return  # the run was handed back; its next holder will run it
            finish.cancelled(exc.message)
        except PlatformError as exc:
            finish.failed(exc.code, exc.message)
        except Exception as exc:
            logger.exception("run %s (%s/%s) failed", run.id, run.component, run.kind)
            finish.failed("job_failed", f"{type(exc).__name__}: {exc}")
        else:
            if not isinstance(result, BaseModel):
                finish.failed(
                    "invalid_result", f"job returned {type(result).__name__}, not a model"
                )
            else:
                finish.succeeded(result)


class _Finisher:
    """Records the outcome of one attempt through the service."""

    def __init__(self, service: RunService, run_id: str, lease: str) -> None:
        self.service, self.run_id, self.lease = service, run_id, lease

    def succeeded(self, result: BaseModel) -> None:
        dumped = result.model_dump(mode="json")
        self.service.finish(
            run_id=self.run_id,
            lease=self.lease,
            status=RunStatus.succeeded,
            result=dumped,
            summary=_summary(result, dumped),
        )

    def failed(self, code: str, message: str) -> None:
        error = {"code": code, "message": message}
        self.service.finish(
            run_id=self.run_id, lease=self.lease, status=RunStatus.failed, error=error
        )

    def cancelled(self, message: str) -> None:
        error = {"code": "cancelled", "message": message}
        self.service.finish(
            run_id=self.run_id, lease=self.lease, status=RunStatus.cancelled, error=error
        )


def _summary(result: BaseModel, dumped: dict[str, Any]) -> Any:
    """A result's own ``summary`` (field or method) if it has one, else the result if small."""
    summary = getattr(result, "summary", None)
    if callable(summary):
        summary = summary()
    if summary is not None:
        return summary.model_dump(mode="json") if isinstance(summary, BaseModel) else summary
    return dumped if len(result.model_dump_json()) <= 2048 else None


def build_executor(
    *, settings: Settings, service: RunService, tables: Mapping[str, JobTable], engine: Any
) -> Executor:
    """The executor ``settings.executor.kind`` names, attached to ``service``.

    ``ray`` (DESIGN §4, wave 2) is refused here with a clear error until it is built: the
    ``Executor`` interface is all a Ray executor needs to plug in without touching components.
    """
    if settings.executor.kind != "local":
        raise FeatureUnavailable(
            f"{settings.executor.kind} executor not available in this build; "
            "set executor.kind to 'local'",
            code="executor_unavailable",
        )
    executor = LocalExecutor(service=service, tables=tables, settings=settings, engine=engine)
    service.executor = executor
    return executor
