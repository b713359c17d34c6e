"""RunService: the run life cycle over the store, with live events on the side.

Status machine: queued -> running -> succeeded | failed | cancelled. Terminal states never
change (the store refuses); a running run may also go back to queued when its worker is lost
or stopping. Every change writes its event in the same transaction and publishes it after
the commit, so followers never see an event the store does not have.

All methods are synchronous and block on the database: async callers go through a thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.errors import Conflict, InvalidRequest, NotFound
from core.runs.events import EventBus
from core.store import crud
from core.store.db import Store
from core.store.models import (
    TEST_OUTCOMES,
    IdempotencyKey,
    Run,
    RunEvent,
    RunEventPublic,
    RunStatus,
)

if TYPE_CHECKING:
    from core.runs.executor import Executor

logger = logging.getLogger(__name__)


class _LeaseLost(Exception):
    """Rolls back a finishing transaction whose run this worker no longer holds."""


class RunService:
    def __init__(self, *, store: Store, bus: EventBus) -> None:
        self.store = store
        self.bus = bus
        self.executor: Executor | None = None  # attached once the executor exists

    # Accepting and reading runs (HTTP side) ---------------------------------------------

    def create(
        self,
        *,
        component: str,
        kind: str,
        params: dict[str, Any],
        model: str | None = None,
        owner: str | None = None,
        idempotency_key: str | None = None,
        admit: Callable[[], None] | None = None,
    ) -> tuple[Run, bool]:
        """Accept a run; returns (run, created). With a key, a repeat returns the original.

        ``admit`` (raises to refuse) checks a new run against the server's state; a replay
        skips it, since the first run may have changed that state (a model it created).
        """
        if admit is not None and not self._seen_key(owner, component, idempotency_key):
            admit()
        fields: dict[str, Any] = {
            "component": component,
            "kind": kind,
            "params": params,
            "model": model,
        }
        if idempotency_key is None:
            with self.store.write_session() as session:
                run = crud.create_run(session, owner=owner, **fields)
            created = True
        else:
            run, created = self._create_once(fields, owner, idempotency_key)
        if created and self.executor is not None:
            self.executor.submit(run.id)
        return run, created

    def _seen_key(self, owner: str | None, component: str, key: str | None) -> bool:
        if key is None:
            return False
        scope = {"owner": owner or "", "component": component, "key": key}
        with self.store.read_session() as session:
            return crud.find_idempotency_key(session, **scope) is not None

    def _create_once(self, fields: dict[str, Any], owner: str | None, key: str) -> tuple[Run, bool]:
        scope = {"owner": owner or "", "component": fields["component"], "key": key}
        request_hash = _request_hash(fields)
        try:
            with self.store.write_session() as session:
                record = crud.find_idempotency_key(session, **scope)
                if record is not None:
                    return _replay(session, record, request_hash), False
                run = crud.create_run(session, owner=owner, **fields)
                crud.add_idempotency_key(session, request_hash=request_hash, run_id=run.id, **scope)
                return run, True
        except IntegrityError:
            # A concurrent request with the same key committed first: answer as it did.
            with self.store.read_session() as session:
                record = crud.find_idempotency_key(session, **scope)
                if record is None:
                    raise _key_in_use() from None
                return _replay(session, record, request_hash), False

    def get(
        self, *, run_id: str, component: str | None = None, visible_to: str | None = None
    ) -> Run:
        """The run, or NotFound — also for runs of other components or other owners."""
        with self.store.read_session() as session:
            run = crud.get_run(session, run_id=run_id)
        if (
            run is None
            or (component is not None and run.component != component)
            or (visible_to is not None and run.owner != visible_to)
        ):
            raise NotFound(f"run {run_id!r} not found", code="run_not_found", param="id")
        return run

    def list_runs(self, *, visible_to: str | None = None, **filters: Any) -> tuple[list[Run], int]:
        """A page of runs (newest first) and the total; ``visible_to=None`` sees every owner."""
        with self.store.read_session() as session:
            return crud.list_runs(session, owner=visible_to, **filters)

    def results(self, *, run: Run) -> Run:
        """The run, if it has finished; Conflict ``run_not_finished`` before that."""
        if not RunStatus(run.status).is_terminal:
            raise Conflict(
                f"run is {run.status}; results are available once it finishes",
                code="run_not_finished",
                param="id",
            )
        return run

    def cancel(self, *, run_id: str) -> Run:
        """Cancel now if queued; flag and signal the job if running; no-op once terminal."""
        with self.store.write_session() as session:
            outcome = crud.request_cancel(session, run_id=run_id)
        if outcome is None:
            raise NotFound(f"run {run_id!r} not found", code="run_not_found", param="id")
        run, event = outcome
        self._publish([event] if event else [])
        if run.status == RunStatus.running and self.executor is not None:
            self.executor.cancel(run_id)
        return run

    def events_after(
        self, *, run_id: str, after: int, limit: int = 500
    ) -> tuple[list[RunEventPublic], bool]:
        """Stored events with seq > after, and whether the run had ended before they were read."""
        with self.store.read_session() as session:
            # Status first: if it was terminal then, the terminal event was committed already.
            run = crud.get_run(session, run_id=run_id)
            ended = run is None or RunStatus(run.status).is_terminal
            events = crud.events_after(session, run_id=run_id, after=after, limit=limit)
        return [RunEventPublic.from_event(e) for e in events], ended

    # Running runs (executor side) -------------------------------------------------------

    def claim(self, *, component: str, lease: str, limit: int | None = None) -> Run | None:
        """The oldest queued run of ``component``, now running under ``lease``; with ``limit``,
        only while fewer than that many runs of the component run anywhere."""
        with self.store.write_session() as session:
            moved = crud.claim_next_queued(session, component=component, lease=lease, limit=limit)
        if moved is None:
            return None
        self._publish([moved[1]])
        return moved[0]

    def emit(
        self, *, run_id: str, type: str, data: dict[str, Any], lease: str | None = None
    ) -> RunEventPublic | None:
        with self.store.write_session() as session:
            event = crud.append_event(session, run_id=run_id, type=type, data=data, lease=lease)
        return self._publish([event])[0] if event else None

    def emit_many(
        self, *, run_id: str, events: list[tuple[str, dict[str, Any]]], lease: str | None = None
    ) -> list[int] | None:
        """Append several events in one transaction; None (and nothing written) if refused."""
        written: list[RunEvent] = []
        try:
            with self.store.write_session() as session:
                for type, data in events:
                    event = crud.append_event(
                        session, run_id=run_id, type=type, data=data, lease=lease
                    )
                    if event is None:
                        raise _LeaseLost
                    written.append(event)
        except _LeaseLost:
            return None
        return [event.seq for event in self._publish(written)]

    def progress(self, *, run_id: str, progress: float, message: str | None, lease: str) -> bool:
        with self.store.write_session() as session:
            event = crud.update_progress(
                session, run_id=run_id, progress=progress, message=message, lease=lease
            )
        self._publish([event] if event else [])
        return event is not None

    def save_result(self, *, run_id: str, result: dict[str, Any], lease: str) -> bool:
        with self.store.write_session() as session:
            return crud.save_result(session, run_id=run_id, result=result, lease=lease)

    def finish(
        self,
        *,
        run_id: str,
        lease: str,
        status: RunStatus,
        result: dict[str, Any] | None = None,
        summary: Any = None,
        error: dict[str, str] | None = None,
    ) -> Run | None:
        """End a run this lease holds: result/error event, then the terminal status event."""
        events: list[RunEvent] = []
        try:
            with self.store.write_session() as session:
                if status == RunStatus.succeeded and crud.lock_cancel_flag(session, run_id=run_id):
                    # The cancel was acknowledged before this commit: it wins, the result stays.
                    status = RunStatus.cancelled
                    error = {"code": "cancelled", "message": "run was cancelled"}
                if status == RunStatus.succeeded:
                    data: dict[str, Any] = {"summary": summary}
                    events.append(_must_append(session, run_id, lease, "result", data))
                elif status == RunStatus.failed and error is not None:
                    events.append(_must_append(session, run_id, lease, "error", dict(error)))
                fields: dict[str, Any] = {"error": error, "worker_id": None}
                if result is not None:
                    fields["result"] = result
                outcome = _outcome(result) if status == RunStatus.succeeded else None
                if status == RunStatus.succeeded:
                    fields.update(progress=1.0, outcome=outcome)
                moved = crud.set_status(
                    session,
                    run_id=run_id,
                    status=status,
                    only_from=[RunStatus.running],
                    lease=lease,
                    event_data=_status_extra(error, outcome),
                    **fields,
                )
                if moved is None:
                    raise _LeaseLost
        except _LeaseLost:
            logger.info("run %s was taken from this worker; its outcome is discarded", run_id)
            return None
        self._publish([*events, moved[1]])
        return moved[0]

    def requeue(self, *, run_id: str, lease: str, reason: str, refund: bool = False) -> bool:
        with self.store.write_session() as session:
            moved = crud.requeue(session, run_id=run_id, reason=reason, lease=lease, refund=refund)
        self._publish([moved[1]] if moved else [])
        return moved is not None

    def heartbeat(self, *, leases: dict[str, str]) -> dict[str, bool]:
        with self.store.write_session() as session:
            return crud.heartbeat(session, leases=leases)

    def held_runs(self, *, leases: dict[str, str]) -> dict[str, bool]:
        """Run id -> cancel requested, for the runs still held under ``leases`` (no write)."""
        with self.store.read_session() as session:
            return crud.held_runs(session, leases=leases)

    def release_lost(
        self, *, run_id: str, lease: str, max_attempts: int, reason: str = "worker_lost"
    ) -> Run | None:
        """The worker holding ``lease`` died: re-queue the run (or fail it, out of attempts)."""
        with self.store.write_session() as session:
            run = crud.get_run(session, run_id=run_id)
            if run is None or run.status != RunStatus.running or run.worker_id != lease:
                return None
            moved = crud.requeue_or_fail(
                session, run=run, max_attempts=max_attempts, lease=lease, reason=reason
            )
        if moved is None:
            return None
        self._publish([moved[1]])
        logger.warning("run %s lost its worker (%s): now %s", run_id, reason, moved[0].status)
        return moved[0]

    def recover_stale(self, *, stale_before: datetime, max_attempts: int) -> list[Run]:
        """Re-queue (or fail, out of attempts) runs whose worker stopped heart-beating."""
        with self.store.write_session() as session:
            moves = crud.requeue_stale(
                session, stale_before=stale_before, max_attempts=max_attempts
            )
        self._publish(event for _, event in moves)
        for run, _ in moves:
            logger.warning("recovered run %s from a lost worker: now %s", run.id, run.status)
        return [run for run, _ in moves]

    def _publish(self, events: Iterable[RunEvent]) -> list[RunEventPublic]:
        published = [RunEventPublic.from_event(event) for event in events]
        for event in published:
            self.bus.publish(event)
        return published


def _must_append(
    session: Session, run_id: str, lease: str, type: str, data: dict[str, Any]
) -> RunEvent:
    event = crud.append_event(session, run_id=run_id, type=type, data=data, lease=lease)
    if event is None:
        raise _LeaseLost
    return event


def _request_hash(fields: dict[str, Any]) -> str:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(session: Session, record: IdempotencyKey, request_hash: str) -> Run:
    if record.request_hash != request_hash:
        raise InvalidRequest(
            "this Idempotency-Key was already used with a different request body",
            code="idempotency_key_reused",
            param="Idempotency-Key",
            status_code=422,
        )
    run = crud.get_run(session, run_id=record.run_id) if record.run_id else None
    if run is None:
        raise _key_in_use()
    return run


def _key_in_use() -> Conflict:
    return Conflict(
        "a request with this Idempotency-Key is still being processed; retry shortly",
        code="idempotency_key_in_use",
        param="Idempotency-Key",
        headers={"Retry-After": "1"},
    )


def _outcome(result: dict[str, Any] | None) -> str | None:
    """The result's own ``outcome`` (test reports carry one), if it is a known value."""
    value = (result or {}).get("outcome")
    return value if value in TEST_OUTCOMES else None


def _status_extra(error: dict[str, str] | None, outcome: str | None) -> dict[str, Any] | None:
    """What the terminal status event carries besides the status: the error or the outcome."""
    if error:
        return {"error": error}
    return {"outcome": outcome} if outcome else None
