"""The run store: SQLModel tables, engines and sessions, and small CRUD functions."""

from core.store.db import Store, create_store_engine
from core.store.models import (
    TERMINAL_STATUSES,
    IdempotencyKey,
    Run,
    RunBase,
    RunError,
    RunEvent,
    RunEventPublic,
    RunLinks,
    RunPublic,
    RunsPublic,
    RunStatus,
)

__all__ = [
    "TERMINAL_STATUSES",
    "IdempotencyKey",
    "Run",
    "RunBase",
    "RunError",
    "RunEvent",
    "RunEventPublic",
    "RunLinks",
    "RunPublic",
    "RunStatus",
    "RunsPublic",
    "Store",
    "create_store_engine",
]
