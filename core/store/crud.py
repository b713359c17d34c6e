"""Small keyword-only CRUD functions over the run store.

Each takes an open session and never commits: the caller owns the transaction (use
``Store.write_session()`` for anything that writes, so SQLite starts it with BEGIN IMMEDIATE).
Status changes are conditional UPDATEs, so a terminal run can never change again and a job
that lost its lease (``worker_id``) can no longer write.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select, text, update
from sqlalchemy.orm import Session
from sqlmodel import col

from core.store.models import (
    TERMINAL_STATUSES,
    IdempotencyKey,
    Run,
    RunEvent,
    RunStatus,
    utcnow,
)

_TERMINAL = [status.value for status in TERMINAL_STATUSES]
# session.info key: run id -> highest seq appended in this transaction (announced at commit).
WRITTEN_EVENTS = "hatchery_written_events"


def create_run(
    session: Session,
    *,
    component: str,
    kind: str,
    params: dict[str, Any],
    model: str | None = None,
    owner: str | None = None,
) -> Run:
    """Insert a queued run together with its first event (seq 1, status queued)."""
    run = Run(component=component, kind=kind, params=params, model=model, owner=owner, last_seq=1)
    session.add(run)
    session.flush()
    session.add(RunEvent(run_id=run.id, seq=1, type="status", data={"status": "queued"}))
    session.flush()
    session.info.setdefault(WRITTEN_EVENTS, {})[run.id] = 1
    return run


def get_run(session: Session, *, run_id: str) -> Run | None:
    return session.get(Run, run_id, populate_existing=True)


def list_runs(
    session: Session,
    *,
    component: str | None = None,
    status: str | None = None,
    kind: str | None = None,
    model: str | None = None,
    owner: str | None = None,
    outcome: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Run], int]:
    """A page of runs, newest first, and the total count matching the filters.

    ``owner=None`` means every owner (admin, or auth off).
    """
    filters = _filters(
        component=component, status=status, kind=kind, model=model, owner=owner, outcome=outcome
    )
    count = session.scalar(select(func.count()).select_from(Run).where(*filters)) or 0
    page = session.scalars(
        select(Run)
        .where(*filters)
        .order_by(col(Run.created_at).desc(), col(Run.id).desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return list(page), count


def _filters(**values: str | None) -> list[ColumnElement[bool]]:
    columns: dict[str, Any] = {"component": Run.component, "status": Run.status, "kind": Run.kind}
    columns |= {"model": Run.model, "owner": Run.owner, "outcome": Run.outcome}
    return [col(columns[name]) == value for name, value in values.items() if value is not None]


def append_event(
    session: Session,
    *,
    run_id: str,
    type: str,
    data: dict[str, Any],
    lease: str | None = None,
    allow_terminal: bool = False,
) -> RunEvent | None:
    """Append an event with the next seq of its run; None if the run may not take events.

    The seq comes from ``run.last_seq`` bumped by an UPDATE in this same transaction: the row
    lock (PostgreSQL) or the write lock (SQLite) makes concurrent appends queue up, so seqs stay
    contiguous without gaps or duplicates.
    """
    conditions = [col(Run.id) == run_id]
    if not allow_terminal:
        conditions.append(col(Run.status).not_in(_TERMINAL))
    if lease is not None:
        conditions.append(col(Run.worker_id) == lease)
    row = session.execute(
        update(Run)
        .where(*conditions)
        .values(last_seq=col(Run.last_seq) + 1)
        .returning(col(Run.last_seq), col(Run.attempts))
        .execution_options(synchronize_session=False)
    ).first()
    if row is None:
        return None
    seq, attempts = row
    # Events before the first claim (queued, a cancel while queued) belong to attempt 1.
    event = RunEvent(
        run_id=run_id, seq=seq, attempt=max(1, attempts), type=type, ts=utcnow(), data=data
    )
    session.add(event)
    session.flush()
    written = session.info.setdefault(WRITTEN_EVENTS, {})
    written[run_id] = max(seq, written.get(run_id, 0))
    return event


def events_after(session: Session, *, run_id: str, after: int, limit: int = 500) -> list[RunEvent]:
    return list(
        session.scalars(
            select(RunEvent)
            .where(col(RunEvent.run_id) == run_id, col(RunEvent.seq) > after)
            .order_by(col(RunEvent.seq))
            .limit(limit)
        ).all()
    )


def set_status(
    session: Session,
    *,
    run_id: str,
    status: RunStatus,
    only_from: Collection[RunStatus] | None = None,
    lease: str | None = None,
    event_data: dict[str, Any] | None = None,
    prelude: list[tuple[str, dict[str, Any]]] | None = None,
    **fields: Any,
) -> tuple[Run, RunEvent] | None:
    """Move a run to ``status`` and append its status event; None if the move is not allowed.

    Terminal runs never move. ``only_from`` narrows the allowed current statuses and ``lease``
    requires the caller to still hold the run. ``fields`` are extra columns to set
    (result, error, message, progress…); ``finished_at`` is set on terminal moves.
    ``prelude``: events appended after the move and before the status event.
    """
    allowed = [s.value for s in (only_from or RunStatus) if s not in TERMINAL_STATUSES]
    conditions = [col(Run.id) == run_id, col(Run.status).in_(allowed)]
    if lease is not None:
        conditions.append(col(Run.worker_id) == lease)
    if status in TERMINAL_STATUSES:
        fields.setdefault("finished_at", utcnow())
    moved = session.execute(
        update(Run)
        .where(*conditions)
        .values(status=status.value, **fields)
        .returning(col(Run.id))
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if moved is None:
        return None
    for type, prelude_data in prelude or ():
        append_event(session, run_id=run_id, type=type, data=prelude_data, allow_terminal=True)
    data = {"status": status.value, **(event_data or {})}
    event = append_event(session, run_id=run_id, type="status", data=data, allow_terminal=True)
    assert event is not None  # the row exists: we just updated it
    run = get_run(session, run_id=run_id)
    assert run is not None
    return run, event


def update_progress(
    session: Session, *, run_id: str, progress: float, message: str | None, lease: str | None
) -> RunEvent | None:
    """Record progress on the run row and as a ``progress`` event, in one transaction."""
    conditions = [col(Run.id) == run_id, col(Run.status) == RunStatus.running.value]
    if lease is not None:
        conditions.append(col(Run.worker_id) == lease)
    session.execute(
        update(Run)
        .where(*conditions)
        .values(progress=progress, message=message)
        .execution_options(synchronize_session=False)
    )
    data = {"progress": progress, "message": message}
    return append_event(session, run_id=run_id, type="progress", data=data, lease=lease)


def claim_next_queued(
    session: Session, *, component: str, lease: str, limit: int | None = None
) -> tuple[Run, RunEvent] | None:
    """Take the oldest queued run of ``component`` and mark it running under ``lease``.

    SKIP LOCKED lets several executors (processes, replicas) claim from PostgreSQL at once;
    on SQLite the BEGIN IMMEDIATE transaction already makes the claim exclusive. With
    ``limit``, nothing is claimed while that many runs of the component are running anywhere
    (a cluster-wide limit): on PostgreSQL claimers of one component queue on an advisory lock
    so that two of them cannot both see the last free place.

    A run that was started before (re-queued) gets an ``attempt`` event first, so followers
    know to drop what the previous attempt streamed.
    """
    if limit is not None:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                {"key": f"hatchery.claim.{component}"},
            )
        running = session.scalar(
            select(func.count())
            .select_from(Run)
            .where(col(Run.component) == component, col(Run.status) == RunStatus.running.value)
        )
        if (running or 0) >= limit:
            return None
    row = session.execute(
        select(col(Run.id), col(Run.attempts), col(Run.started_at))
        .where(col(Run.component) == component, col(Run.status) == RunStatus.queued.value)
        .order_by(col(Run.created_at), col(Run.id))
        .limit(1)
        .with_for_update(skip_locked=True)
    ).first()
    if row is None:
        return None
    run_id, attempts, started_at = row
    prelude = None
    if started_at is not None:
        reason = _last_requeue_reason(session, run_id=run_id)
        prelude = [("attempt", {"attempt": attempts + 1, "reason": reason})]
    now = utcnow()
    return set_status(
        session,
        run_id=run_id,
        status=RunStatus.running,
        only_from=[RunStatus.queued],
        prelude=prelude,
        worker_id=lease,
        attempts=col(Run.attempts) + 1,
        started_at=now,
        heartbeat_at=now,
        progress=0.0,
        message=None,
        result=None,  # a result (also a partial one) comes from the final attempt only
    )


def _last_requeue_reason(session: Session, *, run_id: str) -> str:
    data = session.scalars(
        select(col(RunEvent.data))
        .where(col(RunEvent.run_id) == run_id, col(RunEvent.type) == "status")
        .order_by(col(RunEvent.seq).desc())
        .limit(1)
    ).first()
    return str((data or {}).get("reason") or "requeued")


def held_runs(session: Session, *, leases: dict[str, str]) -> dict[str, bool]:
    """Like ``heartbeat`` (run id -> cancel_requested for the runs still held) but read-only."""
    if not leases:
        return {}
    rows = session.execute(
        select(col(Run.id), col(Run.worker_id), col(Run.cancel_requested)).where(
            col(Run.id).in_(list(leases)), col(Run.status) == RunStatus.running.value
        )
    ).all()
    return {run_id: bool(cancel) for run_id, worker, cancel in rows if leases[run_id] == worker}


def heartbeat(session: Session, *, leases: dict[str, str]) -> dict[str, bool]:
    """Refresh the heartbeat of runs held under ``leases`` (run id -> lease).

    Returns run id -> cancel_requested for the runs still held; a run missing from the answer
    was taken away (re-queued or finished elsewhere) and its job must stop.
    """
    if not leases:
        return {}
    rows = session.execute(
        update(Run)
        .where(col(Run.id).in_(list(leases)), col(Run.status) == RunStatus.running.value)
        .values(heartbeat_at=utcnow())
        .returning(col(Run.id), col(Run.worker_id), col(Run.cancel_requested))
        .execution_options(synchronize_session=False)
    ).all()
    return {run_id: bool(cancel) for run_id, worker, cancel in rows if leases[run_id] == worker}


def requeue_stale(
    session: Session, *, stale_before: datetime, max_attempts: int
) -> list[tuple[Run, RunEvent]]:
    """Recover running runs whose worker stopped heart-beating before ``stale_before``.

    Those with attempts left go back to queued; the others fail with code ``interrupted``.
    Returns the moves made (run after the move, its status event).
    """
    stale = session.scalars(
        select(Run)
        .where(
            col(Run.status) == RunStatus.running.value,
            col(Run.heartbeat_at).is_(None) | (col(Run.heartbeat_at) < stale_before),
        )
        .with_for_update(skip_locked=True)
    ).all()
    moves = [requeue_or_fail(session, run=run, max_attempts=max_attempts) for run in stale]
    return [move for move in moves if move is not None]


def requeue_or_fail(
    session: Session,
    *,
    run: Run,
    max_attempts: int,
    lease: str | None = None,
    reason: str = "worker_lost",
) -> tuple[Run, RunEvent] | None:
    """A running run whose worker died: back to the queue, or failed ``interrupted`` if out
    of attempts (those refunded after a clean shutdown do not count)."""
    if run.attempts - run.attempts_refunded < max_attempts:
        return requeue(session, run_id=run.id, reason=reason, lease=lease)
    error = {
        "code": "interrupted",
        "message": f"worker stopped responding; gave up after {run.attempts} attempts",
    }
    return set_status(
        session,
        run_id=run.id,
        status=RunStatus.failed,
        only_from=[RunStatus.running],
        lease=lease,
        error=error,
        worker_id=None,
        event_data={"error": error},
    )


def requeue(
    session: Session, *, run_id: str, reason: str, lease: str | None = None, refund: bool = False
) -> tuple[Run, RunEvent] | None:
    """Put a running run back in the queue. ``refund`` gives back the attempt (graceful stop).

    A run whose cancel was asked for ends ``cancelled`` instead: a cancel is never lost to a
    retry.
    """
    cancel = session.scalar(select(col(Run.cancel_requested)).where(col(Run.id) == run_id))
    if cancel:
        return _end_cancelled(session, run_id=run_id, only_from=RunStatus.running, lease=lease)
    fields: dict[str, Any] = {"worker_id": None, "heartbeat_at": None, "message": None}
    if refund:
        fields["attempts_refunded"] = col(Run.attempts_refunded) + 1
    return set_status(
        session,
        run_id=run_id,
        status=RunStatus.queued,
        only_from=[RunStatus.running],
        lease=lease,
        event_data={"reason": reason},
        **fields,
    )


def lock_cancel_flag(session: Session, *, run_id: str) -> bool:
    """Lock the run row (PostgreSQL; SQLite's write lock is held already) and read its cancel
    flag: a concurrent ``request_cancel`` then commits either before this (and is seen) or
    after the run has ended (and finds nothing to flag)."""
    flag = session.scalar(
        select(col(Run.cancel_requested)).where(col(Run.id) == run_id).with_for_update()
    )
    return bool(flag)


def request_cancel(session: Session, *, run_id: str) -> tuple[Run, RunEvent | None] | None:
    """Cancel a queued run now (with its status event), or flag a running one for its job."""
    moved = _end_cancelled(session, run_id=run_id, only_from=RunStatus.queued)
    if moved is not None:
        return moved
    session.execute(
        update(Run)
        .where(col(Run.id) == run_id, col(Run.status) == RunStatus.running.value)
        .values(cancel_requested=True)
        .execution_options(synchronize_session=False)
    )
    run = get_run(session, run_id=run_id)
    return None if run is None else (run, None)


def _end_cancelled(
    session: Session, *, run_id: str, only_from: RunStatus, lease: str | None = None
) -> tuple[Run, RunEvent] | None:
    error = {"code": "cancelled", "message": "run was cancelled"}
    return set_status(
        session,
        run_id=run_id,
        status=RunStatus.cancelled,
        only_from=[only_from],
        lease=lease,
        error=error,
        worker_id=None,
        event_data={"error": error},
    )


def save_result(session: Session, *, run_id: str, result: dict[str, Any], lease: str) -> bool:
    """Store a (partial) result on a run this lease still holds."""
    saved = session.execute(
        update(Run)
        .where(
            col(Run.id) == run_id,
            col(Run.status) == RunStatus.running.value,
            col(Run.worker_id) == lease,
        )
        .values(result=result)
        .returning(col(Run.id))
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    return saved is not None


def find_idempotency_key(
    session: Session, *, owner: str, component: str, key: str
) -> IdempotencyKey | None:
    return session.get(IdempotencyKey, (owner, component, key), populate_existing=True)


def add_idempotency_key(
    session: Session, *, owner: str, component: str, key: str, request_hash: str, run_id: str
) -> IdempotencyKey:
    """Record the key; a concurrent duplicate fails here with IntegrityError (unique key)."""
    record = IdempotencyKey(
        owner=owner, component=component, key=key, request_hash=request_hash, run_id=run_id
    )
    session.add(record)
    session.flush()
    return record
