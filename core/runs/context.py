"""What a job sees of its run: ``RunContext``.

Job functions are plain functions of ``(context, request) -> result model``. They report
through the context (every call is persisted before it is pushed to live followers) and call
``check_cancelled()`` often enough — at least once a second — to stop promptly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from core.engine_protocol import ModelEngine
from core.errors import RunCancelled

if TYPE_CHECKING:
    from core.config import Settings
    from core.runs.service import RunService

logger = logging.getLogger(__name__)

JobFn = Callable[["RunContext", Any], BaseModel]


class StopReason(StrEnum):
    cancelled = "cancelled"  # a user asked: the run ends cancelled
    shutdown = "shutdown"  # the executor is stopping: the run goes back to the queue
    lost = "lost"  # another worker took the run over: this job's work no longer counts


class StopSignal:
    """Set once, by the executor, to ask a job to stop; the first reason wins."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: StopReason | None = None

    def set(self, reason: StopReason) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

_STOP_MESSAGES = {
    StopReason.cancelled: "run was cancelled",
    StopReason.shutdown: "worker is shutting down; the run will be re-queued",
    StopReason.lost: "run is no longer held by this worker",
}


class RunContext:
    """The run as seen from inside its job (one per attempt, used from one worker thread)."""

    def __init__(
        self,
        *,
        run_id: str,
        component: str,
        kind: str,
        attempt: int,
        lease: str,
        service: RunService,
        settings: Settings,
        engine: ModelEngine | None,
        stop: StopSignal,
    ) -> None:
        self.run_id = run_id
        self.component = component
        self.kind = kind
        self.attempt = attempt
        self.settings = settings
        self.engine = engine
        self.logger = logger.getChild(component)
        self._lease = lease
        self._service = service
        self._stop = stop

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()

    def check_cancelled(self) -> None:
        """Raise RunCancelled if the run was cancelled or this worker must let it go."""
        if self._stop.is_set():
            reason = self._stop.reason or StopReason.cancelled
            raise RunCancelled(_STOP_MESSAGES[reason])

    def emit(self, type: str, data: Mapping[str, Any]) -> int:
        """Persist an event, then push it to live followers; returns its seq."""
        event = self._service.emit(
            run_id=self.run_id, type=str(type), data=dict(data), lease=self._lease
        )
        if event is None:
            self._stop.set(StopReason.lost)
            self.check_cancelled()
            raise AssertionError("unreachable")  # pragma: no cover
        return event.seq

    def progress(self, frac: float, message: str | None = None) -> None:
        """Record progress (clamped to 0..1) and the current step, as a ``progress`` event."""
        frac = min(1.0, max(0.0, float(frac)))
        if not self._service.progress(
            run_id=self.run_id, progress=frac, message=message, lease=self._lease
        ):
            self._stop.set(StopReason.lost)
            self.check_cancelled()

    def log(self, level: str, message: str) -> None:
        """Log to the server log and to the run's followers as a ``log`` event.

        ``level``: debug, info, warning, error or critical.
        """
        level = level.lower()
        self.logger.log(_LEVELS.get(level, logging.INFO), "run %s: %s", self.run_id, message)
        self.emit("log", {"level": level, "message": message})

    def emit_many(self, events: Sequence[tuple[str, Mapping[str, Any]]]) -> list[int]:
        """Persist several events in one transaction (contiguous seqs), then push them.

        For high-rate streams (tokens): buffer for a few tens of milliseconds, then flush here,
        instead of one transaction per event. Events are batched, never dropped.
        """
        if not events:
            return []
        seqs = self._service.emit_many(
            run_id=self.run_id,
            events=[(str(type), dict(data)) for type, data in events],
            lease=self._lease,
        )
        if seqs is None:
            self._stop.set(StopReason.lost)
            self.check_cancelled()
            raise AssertionError("unreachable")  # pragma: no cover
        return seqs

    def save_partial_result(self, result: BaseModel) -> None:
        """Keep what is done so far; a run that later fails or is cancelled still carries it."""
        if not self._service.save_result(
            run_id=self.run_id, result=result.model_dump(mode="json"), lease=self._lease
        ):
            self._stop.set(StopReason.lost)
            self.check_cancelled()
