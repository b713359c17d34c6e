"""Engines and sessions for the run store.

SQLite is the embedded default, so it is tuned to take many concurrent writers: every
connection sets ``busy_timeout`` (before WAL, since switching to WAL may itself wait for a
lock), ``journal_mode=WAL``, ``synchronous=NORMAL`` and ``foreign_keys=ON``; and every write
transaction starts with ``BEGIN IMMEDIATE``. A deferred transaction that reads and then writes
can fail at once with "database is locked" when another writer got in between — the busy
timeout does not help then — so writes take the write lock up front. Inside one process,
writers also queue on a Python lock, which is fairer than SQLite's sleeping busy handler.

Any other SQLAlchemy URL works; PostgreSQL (``postgresql+psycopg://``) is the scale-out store.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from core.store import models  # noqa: F401  (registers the tables on SQLModel.metadata)
from core.store.crud import WRITTEN_EVENTS
from core.store.migrate import upgrade_schema

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
# PostgreSQL NOTIFY channel announcing committed events: payload "origin run_id seq".
EVENTS_CHANNEL = "hatchery_run_events"
_BEGIN_OPTION = "hatchery_sqlite_begin"


def create_store_engine(url: str) -> Engine:
    """An engine for ``url`` with the pragmas (SQLite) or pool settings (servers) we rely on."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed)
    return create_engine(
        parsed,
        pool_size=10,
        max_overflow=30,
        pool_timeout=30,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


def _sqlite_engine(url: URL) -> Engine:
    database = url.database or ""
    in_memory = database in ("", ":memory:") or url.query.get("mode") == "memory"
    kwargs: dict[str, Any] = {
        "connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    }
    if in_memory:
        kwargs["poolclass"] = StaticPool  # one shared connection, or each would see its own DB
    else:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs.update(pool_size=8, max_overflow=64, pool_timeout=60)
    engine = create_engine(url, **kwargs)
    event.listen(engine, "connect", _on_sqlite_connect)
    event.listen(engine, "begin", _on_sqlite_begin)
    return engine


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take BEGIN away from the sqlite3 module so _on_sqlite_begin decides its kind.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _on_sqlite_begin(connection: Any) -> None:
    mode = connection.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


class Store:
    """The run store: one engine, read sessions and write sessions.

    Sessions are synchronous; async code reaches them through a thread
    (``anyio.to_thread.run_sync`` / ``run_in_threadpool``), never on the event loop.
    """

    def __init__(self, url: str | None = None, *, engine: Engine | None = None) -> None:
        if engine is None:
            if url is None:
                raise ValueError("Store needs a url or an engine")
            engine = create_store_engine(url)
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self.is_postgresql = engine.dialect.name == "postgresql"
        # Names this store's writes in event announcements, so this process's own watcher can
        # skip them: its followers got those events through the in-process bus already.
        self.origin = uuid.uuid4().hex[:16]
        self._writer: Engine = (
            engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"}) if self.is_sqlite else engine
        )
        # PostgreSQL serialises conflicting writers with row locks; no process-wide lock there.
        self._write_lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if self.is_sqlite else contextlib.nullcontext()
        )

    @property
    def writer(self) -> Engine:
        """The engine for writes (SQLite: transactions begin IMMEDIATE)."""
        return self._writer

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def create_schema(self) -> None:
        """Bring the schema to the newest migration (creating it in an empty database)."""
        upgrade_schema(self.writer)

    @contextlib.contextmanager
    def read_session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    @contextlib.contextmanager
    def write_session(self) -> Iterator[Session]:
        """A transaction that commits on success and rolls back on error.

        Do not nest: on SQLite the inner one would wait for the outer one's write lock.
        """
        with self._write_lock, Session(self._writer, expire_on_commit=False) as session:
            try:
                yield session
                self._announce(session)
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def _announce(self, session: Session) -> None:
        """NOTIFY the events this transaction wrote; PostgreSQL delivers them at commit."""
        written: dict[str, int] = session.info.pop(WRITTEN_EVENTS, {})
        if not self.is_postgresql:
            return
        for run_id, seq in written.items():
            session.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": EVENTS_CHANNEL, "payload": f"{self.origin} {run_id} {seq}"},
            )

    def ping(self) -> bool:
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception:
            logger.warning("store %s is not reachable", self.url, exc_info=True)
            return False
        return True

    def dispose(self) -> None:
        self.engine.dispose()
