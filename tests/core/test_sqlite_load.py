"""50 concurrent writers on one SQLite file: no "database is locked", seqs stay contiguous.

Runs for HATCHERY_LOAD_TEST_SECONDS (default 3 s; the issue's full figure is 20 s). The
writers share five Store instances — five engines with their own in-process write locks, as
five server processes would — so SQLite's own locking (BEGIN IMMEDIATE + busy_timeout) is
exercised, not just the in-process lock.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from core.store import crud
from core.store.db import Store

WRITERS = 50
STORES = 5


def test_fifty_writers_never_see_database_locked(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    seconds = float(os.environ.get("HATCHERY_LOAD_TEST_SECONDS", "3"))
    stores = [Store(sqlite_url) for _ in range(STORES)]
    stores[0].create_schema()
    shared_run = _running_run(stores[0])
    writes = [0] * WRITERS
    errors: list[BaseException] = []
    deadline = time.monotonic() + seconds

    def writer(index: int) -> None:
        store = stores[index % STORES]
        own_run = _running_run(store)
        try:
            # Every writer must get at least one turn: a writer that busy_timeout gave up on
            # would raise "database is locked", which is what this test looks for.
            while time.monotonic() < deadline or writes[index] == 0:
                # Mostly appends to the writer's own run, some to one run shared by all,
                # some brand-new runs: the read-then-write transactions the platform makes.
                target = shared_run if writes[index] % 4 == 0 else own_run
                with store.write_session() as session:
                    if writes[index] % 10 == 9:
                        crud.create_run(session, component="load", kind="k", params={})
                    else:
                        crud.append_event(session, run_id=target, type="log", data={"i": index})
                writes[index] += 1
        except BaseException as exc:  # record, so the failure is reported with the figures
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    total = sum(writes)
    with capsys.disabled():
        print(
            f"\nSQLite load: {WRITERS} writers over {STORES} engines for {elapsed:.1f} s: "
            f"{total} write transactions, {total / elapsed:.0f} writes/s, {len(errors)} errors"
        )
    assert not errors, f"{len(errors)} writer errors, first: {errors[0]!r}"
    with stores[0].read_session() as session:
        seqs = [e.seq for e in crud.events_after(session, run_id=shared_run, after=0, limit=10**6)]
    assert seqs == list(range(1, len(seqs) + 1))
    for store in stores:
        store.dispose()


def _running_run(store: Store) -> str:
    with store.write_session() as session:
        run = crud.create_run(session, component="load", kind="k", params={})
    with store.write_session() as session:
        crud.set_status(session, run_id=run.id, status=crud.RunStatus.running)
    return run.id
