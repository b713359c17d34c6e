"""Alembic's environment: migrations run on the connection `core.store.migrate` hands over.

Run by hand (``alembic -x url=... upgrade head`` with a config naming this directory), it makes
its own engine with the store's settings (SQLite pragmas included).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection
from sqlmodel import SQLModel

from core.store import models  # noqa: F401  (registers the tables on SQLModel.metadata)


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=SQLModel.metadata)
    with context.begin_transaction():
        context.run_migrations()


_connection = context.config.attributes.get("connection")
if _connection is not None:
    _run(_connection)
else:
    from core.store.db import create_store_engine

    _url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    if not _url:
        raise SystemExit("give the store URL: alembic -x url=sqlite:///... upgrade head")
    _engine = create_store_engine(_url)
    with _engine.begin() as _conn:
        _run(_conn)
    _engine.dispose()
