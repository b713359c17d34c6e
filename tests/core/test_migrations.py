"""Alembic migrations: a new store, a store made before migrations, and one made by create_all
after issue 16's columns, on SQLite and PostgreSQL, all end at the head revision matching the
models, keeping every run and event."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, Table, create_engine, inspect
from sqlalchemy.pool import NullPool
from sqlmodel import SQLModel

from core.store import crud
from core.store.db import Store
from core.store.migrate import current_revision, head_revision, upgrade_schema

LEGACY = Path(__file__).with_name("legacy_schema")
CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def legacy_store(url: str) -> None:
    """A store as the server made it at commit 02bc257, holding one finished run."""
    engine = create_engine(url, poolclass=NullPool)
    dialect = engine.dialect.name
    with engine.begin() as connection:
        script = (LEGACY / f"02bc257.{dialect}.sql").read_text()
        for statement in script.split(";"):
            lines = [line for line in statement.splitlines() if not line.startswith("--")]
            if "".join(lines).strip():
                connection.exec_driver_sql("\n".join(lines))
        tables = MetaData()
        run = Table("run", tables, autoload_with=connection)
        event = Table("run_event", tables, autoload_with=connection)
        # Timestamps as that commit stored them: naive UTC text on SQLite.
        stamp = CREATED.replace(tzinfo=None) if dialect == "sqlite" else CREATED
        connection.execute(
            run.insert().values(
                id="a" * 32,
                component="generator",
                kind="text",
                model="bdh-nano",
                params={"prompts": ["hi"]},
                status="succeeded",
                progress=1.0,
                result={"completions": ["there"]},
                attempts=1,
                last_seq=3,
                cancel_requested=False,
                created_at=stamp,
                finished_at=stamp,
            )
        )
        connection.execute(
            event.insert(),
            [
                {"run_id": "a" * 32, "seq": seq, "type": kind, "ts": stamp, "data": data}
                for seq, kind, data in [
                    (1, "status", {"status": "queued"}),
                    (2, "token", {"text": "there"}),
                    (3, "status", {"status": "succeeded"}),
                ]
            ],
        )
    engine.dispose()


def assert_at_head_matching_models(store: Store) -> None:
    with store.engine.connect() as connection:
        assert current_revision(connection) == head_revision()
        differences = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert differences == []


def test_a_new_store_is_created_by_the_migrations(store_url: str) -> None:
    store = Store(store_url)
    try:
        store.create_schema()
        assert_at_head_matching_models(store)
        store.create_schema()  # a second start finds nothing to do
        assert_at_head_matching_models(store)
    finally:
        store.dispose()


def test_a_store_from_before_migrations_upgrades_and_keeps_its_runs(store_url: str) -> None:
    legacy_store(store_url)
    store = Store(store_url)
    try:
        store.create_schema()  # what every server does at start-up
        assert_at_head_matching_models(store)
        with store.read_session() as session:
            run = crud.get_run(session, run_id="a" * 32)
            assert run is not None
            assert (run.status, run.result, run.attempts) == (
                "succeeded",
                {"completions": ["there"]},
                1,
            )
            assert run.attempts_refunded == 0 and run.created_at == CREATED
            events = crud.events_after(session, run_id="a" * 32, after=0)
            assert [(e.seq, e.type, e.attempt) for e in events] == [
                (1, "status", 1),
                (2, "token", 1),
                (3, "status", 1),
            ]
            assert events[1].data == {"text": "there"} and events[1].ts == CREATED
        with store.write_session() as session:  # the upgraded store takes new work
            new = crud.create_run(session, component="generator", kind="text", params={})
            new_id = new.id
        with store.read_session() as session:
            assert crud.events_after(session, run_id=new_id, after=0)[0].attempt == 1
    finally:
        store.dispose()


def test_a_store_made_by_create_all_after_the_attempt_columns_is_stamped(
    store_url: str,
) -> None:
    engine = create_engine(store_url, poolclass=NullPool)
    SQLModel.metadata.create_all(engine)  # what main did between issue 16 and migrations
    engine.dispose()
    store = Store(store_url)
    try:
        store.create_schema()
        assert_at_head_matching_models(store)
    finally:
        store.dispose()


def test_upgrade_schema_can_stop_at_a_revision(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'partial.db'}")
    try:
        assert upgrade_schema(store.engine, "0001_baseline") == "0001_baseline"
        assert "attempt" not in {c["name"] for c in inspect(store.engine).get_columns("run_event")}
        assert upgrade_schema(store.engine) == head_revision()
    finally:
        store.dispose()


def test_hatchery_db_upgrade(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hatchery_cli import app

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    legacy_store(url)
    result = CliRunner().invoke(app, ["db", "upgrade", "--url", url])
    assert result.exit_code == 0, result.output
    assert f"revision {head_revision()}" in result.output
    store = Store(url)
    try:
        assert_at_head_matching_models(store)
        with store.read_session() as session:
            assert crud.get_run(session, run_id="a" * 32) is not None
    finally:
        store.dispose()
