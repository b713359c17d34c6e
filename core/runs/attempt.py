"""One attempt of a run, wherever it runs: in a local worker thread or in a Ray worker.

``execute_attempt`` calls the job and records its outcome; ``LeaseKeeper`` keeps the leases of
the attempts a process holds: it heartbeats every ``heartbeat_s`` and, in between, reads the
cancel flags every ``CANCEL_POLL_S`` so a cancel sent to any replica stops the job within a
second (the flag is in the store, so it is never lost, whichever process receives it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from core.config import Settings
from core.engine_protocol import ModelEngine
from core.errors import PlatformError, RunCancelled
from core.runs.context import JobFn, RunContext, StopReason, StopSignal
from core.runs.service import RunService
from core.store.models import Run, RunStatus

logger = logging.getLogger(__name__)

CANCEL_POLL_S = 0.25  # how often held runs' cancel flags are read between heartbeats


@dataclass(frozen=True)
class JobTable:
    """What an executor needs to run one component's runs."""

    component: str
    parse: Callable[[dict[str, Any]], Any]  # stored params -> the validated request
    jobs: Mapping[str, JobFn]  # kind -> job function


@dataclass(frozen=True)
class Held:
    """One attempt a process holds: its lease and the signal that stops its job."""

    lease: str
    stop: StopSignal


def execute_attempt(
    *,
    run: Run,
    lease: str,
    stop: StopSignal,
    table: JobTable,
    service: RunService,
    settings: Settings,
    engine: ModelEngine | None,
) -> None:
    """Run the job of ``run`` under ``lease`` and record how it ended.

    A job stopped for shutdown or a lost lease records nothing: the run was handed back and
    its next holder runs it.
    """
    context = RunContext(
        run_id=run.id,
        component=run.component,
        kind=run.kind,
        attempt=run.attempts,
        lease=lease,
        service=service,
        settings=settings,
        engine=engine,
        stop=stop,
    )
    finish = _Finisher(service, run.id, lease)
    try:
        request = table.parse(run.params)
        job = table.jobs[run.kind]
        result = job(context, request)
    except RunCancelled as exc:
        if stop.reason in (StopReason.shutdown, StopReason.lost):
            return
        finish.cancelled(exc.message)
    except PlatformError as exc:
        finish.failed(exc.code, exc.message)
    except Exception as exc:
        logger.exception("run %s (%s/%s) failed", run.id, run.component, run.kind)
        finish.failed("job_failed", f"{type(exc).__name__}: {exc}")
    else:
        if not isinstance(result, BaseModel):
            finish.failed("invalid_result", f"job returned {type(result).__name__}, not a model")
        else:
            finish.succeeded(result)


class LeaseKeeper:
    """Heartbeats and cancel watching for the attempts ``held()`` returns, on one thread.

    ``after_beat`` runs after each heartbeat (the local executor recovers stale runs there).
    """

    def __init__(
        self,
        *,
        service: RunService,
        heartbeat_s: float,
        held: Callable[[], Mapping[str, Held]],
        after_beat: Callable[[], None] | None = None,
    ) -> None:
        self.service = service
        self.heartbeat_s = heartbeat_s
        self._held = held
        self._after_beat = after_beat
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="hatchery-leases", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop heart-beating: from now on other processes may take these runs over."""
        self._closed.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _loop(self) -> None:
        next_beat = 0.0
        while not self._closed.wait(min(CANCEL_POLL_S, self.heartbeat_s)):
            try:
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.heartbeat_s
                    self._check(self.service.heartbeat)
                    if self._after_beat is not None:
                        self._after_beat()
                else:
                    self._check(self.service.held_runs)
            except Exception:
                logger.exception("keeping run leases failed; retrying")

    def _check(self, read: Callable[..., dict[str, bool]]) -> None:
        held = dict(self._held())
        if not held:
            return
        answer = read(leases={run_id: h.lease for run_id, h in held.items()})
        for run_id, h in held.items():
            if run_id not in answer:
                h.stop.set(StopReason.lost)
            elif answer[run_id]:  # cancel requested, perhaps through another server process
                h.stop.set(StopReason.cancelled)


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
