"""The store on SQLite and on real PostgreSQL: CRUD, seq allocation, claims, recovery."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from core.store import crud
from core.store.db import Store
from core.store.models import RunStatus


def new_run(store: Store, **fields: object) -> str:
    values = {"component": "sample", "kind": "sleep", "params": {"n": 1}} | fields
    with store.write_session() as session:
        return crud.create_run(session, **values).id  # type: ignore[arg-type]


def claim(store: Store, lease: str = "lease-1", component: str = "sample") -> str | None:
    with store.write_session() as session:
        moved = crud.claim_next_queued(session, component=component, lease=lease)
        return moved[0].id if moved else None


def test_create_get_and_first_event(store: Store) -> None:
    run_id = new_run(store, model="bdh-nano", owner="key-a")
    with store.read_session() as session:
        run = crud.get_run(session, run_id=run_id)
        events = crud.events_after(session, run_id=run_id, after=0)
    assert run is not None and len(run.id) == 32
    assert (run.status, run.attempts, run.last_seq, run.owner) == ("queued", 0, 1, "key-a")
    assert run.params == {"n": 1}
    assert run.created_at.tzinfo is not None and run.created_at.utcoffset() == timedelta(0)
    assert [(e.seq, e.type, e.data) for e in events] == [(1, "status", {"status": "queued"})]
    assert events[0].ts.tzinfo is not None


def test_list_filters_pagination_newest_first(store: Store) -> None:
    ids = [new_run(store, kind="sleep" if i % 2 else "chatty", owner=f"o{i % 2}") for i in range(6)]
    new_run(store, component="other")
    with store.read_session() as session:
        page, count = crud.list_runs(session, component="sample", limit=4)
        assert count == 6 and [r.id for r in page] == ids[::-1][:4]
        page, count = crud.list_runs(session, component="sample", limit=4, offset=4)
        assert [r.id for r in page] == ids[::-1][4:]
        page, count = crud.list_runs(session, component="sample", kind="chatty")
        assert count == 3 and {r.kind for r in page} == {"chatty"}
        page, count = crud.list_runs(session, owner="o1", status="queued")
        assert count == 3 and {r.owner for r in page} == {"o1"}
        assert crud.list_runs(session, status="running")[1] == 0


def test_concurrent_appends_get_contiguous_seqs(store: Store) -> None:
    run_id = new_run(store)
    claim(store)

    def append_many(worker: int) -> None:
        for index in range(25):
            with store.write_session() as session:
                data = {"worker": worker, "index": index}
                assert crud.append_event(session, run_id=run_id, type="log", data=data)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(append_many, range(8)))
    with store.read_session() as session:
        seqs = [e.seq for e in crud.events_after(session, run_id=run_id, after=0, limit=1000)]
        run = crud.get_run(session, run_id=run_id)
    assert seqs == list(range(1, 203))  # queued, running, 200 logs
    assert run is not None and run.last_seq == 202


def test_terminal_states_never_change(store: Store) -> None:
    run_id = new_run(store)
    claim(store, lease="L")
    with store.write_session() as session:
        done = crud.set_status(session, run_id=run_id, status=RunStatus.succeeded, lease="L")
        assert done is not None and done[0].finished_at is not None
    with store.write_session() as session:
        for status in RunStatus:
            assert crud.set_status(session, run_id=run_id, status=status) is None
        assert crud.append_event(session, run_id=run_id, type="log", data={}) is None
        assert crud.request_cancel(session, run_id=run_id) == (
            crud.get_run(session, run_id=run_id),
            None,
        )
    with store.read_session() as session:
        run = crud.get_run(session, run_id=run_id)
    assert run is not None and run.status == "succeeded" and run.last_seq == 3


def test_lease_guards_writes(store: Store) -> None:
    run_id = new_run(store)
    claim(store, lease="mine")
    with store.write_session() as session:
        assert crud.append_event(session, run_id=run_id, type="log", data={}, lease="other") is None
        assert crud.append_event(session, run_id=run_id, type="log", data={}, lease="mine")
        assert not crud.save_result(session, run_id=run_id, result={}, lease="other")
        assert (
            crud.set_status(session, run_id=run_id, status=RunStatus.failed, lease="other") is None
        )


def test_claims_are_fifo_and_exclusive(store: Store) -> None:
    ids = [new_run(store) for _ in range(20)]
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        while (run_id := claim(store, lease=f"w{index}")) is not None:
            with lock:
                claimed.append(run_id)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(ids) and len(set(claimed)) == 20
    with store.read_session() as session:
        runs, _ = crud.list_runs(session, status="running", limit=100)
    assert {r.attempts for r in runs} == {1} and all(r.worker_id for r in runs)


def test_claim_order_is_oldest_first(store: Store) -> None:
    first, second = new_run(store), new_run(store)
    assert claim(store) == first and claim(store) == second and claim(store) is None
    assert claim(store, component="nothing") is None


def test_requeue_stale_then_fail_interrupted(store: Store) -> None:
    run_id = new_run(store)
    claim(store, lease="dead-1")
    future = datetime.now(UTC) + timedelta(seconds=1)
    with store.write_session() as session:
        moves = crud.requeue_stale(session, stale_before=future, max_attempts=2)
    assert [(r.id, r.status, r.worker_id) for r, _ in moves] == [(run_id, "queued", None)]
    claim(store, lease="dead-2")  # attempt 2
    with store.write_session() as session:
        assert (
            crud.requeue_stale(
                session, stale_before=datetime(2000, 1, 1, tzinfo=UTC), max_attempts=2
            )
            == []
        )
        moves = crud.requeue_stale(session, stale_before=future, max_attempts=2)
    run, event = moves[0]
    assert (run.status, run.attempts, run.error["code"]) == ("failed", 2, "interrupted")  # type: ignore[index]
    assert event.data["status"] == "failed"


def test_heartbeat_reports_cancel_and_lost_runs(store: Store) -> None:
    mine, taken = new_run(store), new_run(store)
    claim(store, lease="A")
    claim(store, lease="B")
    with store.write_session() as session:
        crud.request_cancel(session, run_id=mine)
        answer = crud.heartbeat(session, leases={mine: "A", taken: "not-B"})
    assert answer == {mine: True}


def test_cancel_queued_is_immediate(store: Store) -> None:
    run_id = new_run(store)
    with store.write_session() as session:
        outcome = crud.request_cancel(session, run_id=run_id)
    assert outcome is not None
    run, event = outcome
    assert run.status == "cancelled" and event is not None
    assert event.data == {
        "status": "cancelled",
        "error": {"code": "cancelled", "message": "run was cancelled"},
    }


def test_idempotency_key_is_unique_per_owner_and_component(store: Store) -> None:
    run_id = new_run(store)
    key = {"component": "sample", "key": "k", "request_hash": "h", "run_id": run_id}
    with store.write_session() as session:
        crud.add_idempotency_key(session, owner="", **key)
        crud.add_idempotency_key(session, owner="other", **key)
    with pytest.raises(IntegrityError), store.write_session() as session:
        crud.add_idempotency_key(session, owner="", **key)
    with store.read_session() as session:
        found = crud.find_idempotency_key(session, owner="", component="sample", key="k")
    assert found is not None and found.run_id == run_id


def test_sqlite_connections_are_tuned(sqlite_url: str) -> None:
    store = Store(sqlite_url)
    with store.read_session() as session:
        pragmas = {
            name: session.execute(text(f"PRAGMA {name}")).scalar()
            for name in ("journal_mode", "busy_timeout", "synchronous", "foreign_keys")
        }
    store.dispose()
    assert pragmas == {
        "journal_mode": "wal",
        "busy_timeout": 30000,
        "synchronous": 1,
        "foreign_keys": 1,
    }


def test_ping(store: Store) -> None:
    assert store.ping()
    unreachable = Store("postgresql+psycopg://nobody@127.0.0.1:1/x")
    assert not unreachable.ping()
    unreachable.dispose()


def test_nul_characters_are_stored_as_replacement_on_every_store(store: Store) -> None:
    """PostgreSQL's JSONB cannot hold U+0000: generated text with a NUL must still be kept."""
    run_id = new_run(store)
    with store.write_session() as session:
        crud.append_event(session, run_id=run_id, type="token", data={"text": "a\x00b", "k\x00": 1})
    with store.read_session() as session:
        events = crud.events_after(session, run_id=run_id, after=1)
    assert [e.data for e in events] == [{"text": "a\ufffdb", "k\ufffd": 1}]
