"""Schema migrations (Alembic, `core/store/migrations`): applied at start-up and by
``hatchery db upgrade``.

`upgrade_schema` takes a store to the newest revision in one transaction. On PostgreSQL it
holds an advisory lock meanwhile, so replicas starting together migrate once; on SQLite the
transaction starts with ``BEGIN IMMEDIATE`` (the store's writer engine), which does the same.

Stores made before migrations existed (``create_all`` at every start) have tables but no
``alembic_version``: they are stamped with the newest revision whose columns they already have
(`_LEGACY_REVISIONS`), then upgraded like any other store.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, Inspector, inspect, text

logger = logging.getLogger(__name__)

SCRIPT_LOCATION = Path(__file__).with_name("migrations")
# Any constant works; it only has to be the same for every replica of this application.
_PG_LOCK_KEY = 0x48415443  # "HATC"


def _columns(inspector: Inspector, table: str) -> set[str]:
    return {column["name"] for column in inspector.get_columns(table)}


# Newest first: (revision, does an unversioned store already have its columns?)
_LEGACY_REVISIONS: list[tuple[str, Callable[[Inspector], bool]]] = [
    ("0003_outcome", lambda i: "outcome" in _columns(i, "run")),
    (
        "0002_attempts",
        lambda i: (
            "attempt" in _columns(i, "run_event") and "attempts_refunded" in _columns(i, "run")
        ),
    ),
    ("0001_baseline", lambda i: True),
]


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migrations found"
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade_schema(engine: Engine, revision: str = "head") -> str | None:
    """Migrate the store behind `engine` to `revision`; return the revision it is at now."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        current = current_revision(connection)
        if current == head_revision() and revision == "head":
            return current  # the common start-up: nothing to do, no script directory scan
        config = alembic_config(connection)
        if current is None:
            legacy = _legacy_revision(inspect(connection))
            if legacy is not None:
                logger.info("store made before migrations: stamping it at %s", legacy)
                command.stamp(config, legacy)
        command.upgrade(config, revision)
        now = current_revision(connection)
    logger.info("store schema at revision %s", now)
    return now


def _legacy_revision(inspector: Inspector) -> str | None:
    """The revision an unversioned store matches; None for an empty database."""
    if not inspector.has_table("run"):
        return None
    return next(revision for revision, present in _LEGACY_REVISIONS if present(inspector))


def upgrade_store(url: str, revision: str = "head") -> str | None:
    """`upgrade_schema` for the store at `url` (what ``hatchery db upgrade`` runs)."""
    from core.store.db import Store  # db imports this module

    store = Store(url)
    try:
        return upgrade_schema(store.writer, revision)
    finally:
        store.dispose()
