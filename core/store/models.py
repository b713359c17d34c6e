"""Tables and public models of the run store: one family per entity.

``Run`` (table ``run``), ``RunEvent`` (``run_event``, seq contiguous per run from 1) and
``IdempotencyKey`` (``idempotency_key``, unique per owner, component and key). Ids are UUID hex
strings; timestamps are timezone-aware UTC everywhere, SQLite included; params, results and
errors are JSON columns (JSONB on PostgreSQL) — never pickles.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import JSON, DateTime, Index, String, TypeDecorator
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


class PortableJSON(TypeDecorator[Any]):
    """JSON (JSONB on PostgreSQL). U+0000, which JSONB cannot hold, is stored as U+FFFD.

    Requests holding NUL are refused at submission (core.runs.router), so this only ever
    touches generated text, where a NUL byte is shown as the replacement character anyway.
    """

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        return dialect.type_descriptor(JSONB() if dialect.name == "postgresql" else JSON())

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return _without_nul(value)


JSONType = PortableJSON()


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, also on SQLite (which has no time zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        # SQLite compares the stored text, so store one fixed naive-UTC format there.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class RunStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


# What a finished test run found: "failed" when any case failed or errored. Kept apart from
# the status, which stays the lifecycle ("succeeded" = the suite ran to the end).
TestOutcome = Literal["passed", "failed"]
TEST_OUTCOMES: tuple[str, ...] = ("passed", "failed")

TERMINAL_STATUSES = frozenset({RunStatus.succeeded, RunStatus.failed, RunStatus.cancelled})


class RunBase(SQLModel):
    component: str = Field(max_length=64, index=True)
    kind: str = Field(max_length=64)
    model: str | None = Field(default=None, max_length=255, index=True)
    params: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)


class Run(RunBase, table=True):
    __tablename__ = "run"
    __table_args__ = (
        Index("ix_run_component_status_created", "component", "status", "created_at"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    # A plain string column: a database enum type would need a migration for every new status.
    status: str = Field(default=RunStatus.queued.value, sa_type=String(16), index=True)
    progress: float = 0.0
    message: str | None = Field(default=None)
    owner: str | None = Field(default=None, max_length=64, index=True)
    result: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    error: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    # A test result's outcome (TEST_OUTCOMES), set with the final result; null for other runs.
    outcome: str | None = Field(default=None, sa_type=String(16), index=True)
    # Times the run was started; a start that ended in a clean shutdown is refunded below, so
    # attempts - attempts_refunded is what max_attempts limits. Kept monotonic because events
    # are tagged with their attempt: two stretches of a stream must never share a number.
    attempts: int = 0
    attempts_refunded: int = 0
    # Highest event seq handed out; bumped in the same transaction as the event insert.
    last_seq: int = 0
    cancel_requested: bool = False
    # The claim ("lease") of the worker running it; a job that lost its lease cannot write.
    worker_id: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    heartbeat_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class RunEvent(SQLModel, table=True):
    __tablename__ = "run_event"

    run_id: str = Field(foreign_key="run.id", primary_key=True, max_length=32, ondelete="CASCADE")
    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    # The attempt (1-based) that wrote it: readers reset per-attempt state when it changes.
    attempt: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    type: str = Field(max_length=32)
    ts: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    data: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)


class IdempotencyKey(SQLModel, table=True):
    __tablename__ = "idempotency_key"

    # "" rather than NULL when auth is off: NULLs never collide in a unique key.
    owner: str = Field(default="", primary_key=True, max_length=64)
    component: str = Field(primary_key=True, max_length=64)
    key: str = Field(primary_key=True, max_length=255)
    request_hash: str = Field(max_length=64)
    run_id: str | None = Field(
        default=None, foreign_key="run.id", max_length=32, ondelete="CASCADE"
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


# Public models ---------------------------------------------------------------------------


class RunError(BaseModel):
    code: str
    message: str


class RunLinks(BaseModel):
    status: str
    results: str
    ws: str
    events: str


class RunPublic(RunBase):
    id: str
    status: RunStatus
    progress: float
    message: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    elapsed_s: float | None
    eta_s: float | None
    error: RunError | None
    attempts: int
    outcome: TestOutcome | None = None
    links: RunLinks

    @classmethod
    def from_run(cls, run: Run, *, now: datetime | None = None) -> RunPublic:
        elapsed = _elapsed_s(run, now or utcnow())
        base = f"/api/{run.component}"
        return cls(
            id=run.id,
            component=run.component,
            kind=run.kind,
            model=run.model,
            params=run.params,
            status=RunStatus(run.status),
            progress=run.progress,
            message=run.message,
            created_at=run.created_at,
            started_at=run.started_at,
            finished_at=run.finished_at,
            elapsed_s=elapsed,
            eta_s=_eta_s(run, elapsed),
            error=RunError.model_validate(run.error) if run.error else None,
            attempts=run.attempts,
            outcome=run.outcome if run.status == RunStatus.succeeded else None,  # type: ignore[arg-type]
            links=RunLinks(
                status=f"{base}/status/{run.id}",
                results=f"{base}/results/{run.id}",
                ws=f"{base}/ws/{run.id}",
                events=f"{base}/events/{run.id}",
            ),
        )


class RunsPublic(BaseModel):
    data: list[RunPublic]
    count: int


class RunEventPublic(BaseModel):
    seq: int
    run_id: str
    attempt: int = 1
    type: str
    ts: datetime
    data: dict[str, Any]

    @classmethod
    def from_event(cls, event: RunEvent) -> RunEventPublic:
        return cls(
            seq=event.seq,
            run_id=event.run_id,
            attempt=event.attempt,
            type=event.type,
            ts=event.ts,
            data=event.data,
        )

    @property
    def is_terminal(self) -> bool:
        """A status event that ends the run: nothing follows it."""
        return self.type == "status" and self.data.get("status") in TERMINAL_STATUSES


def _elapsed_s(run: Run, now: datetime) -> float | None:
    if run.started_at is None:
        return None
    end = run.finished_at or now
    return round(max(0.0, (end - run.started_at).total_seconds()), 3)


def _eta_s(run: Run, elapsed: float | None) -> float | None:
    # A linear extrapolation is only honest while running with some progress to go on.
    if run.status != RunStatus.running or elapsed is None or not 0.0 < run.progress < 1.0:
        return None
    return round(elapsed * (1.0 - run.progress) / run.progress, 3)
