"""Watching the store for events written by other processes (DESIGN §4, issue 16).

An API replica's followers get this process's events through the in-process ``EventBus``.
Events written elsewhere — a Ray worker, a job on another replica, a recovery — only reach
them through the store. ``StoreWatcher`` turns those into bus pokes:

- PostgreSQL: every write transaction NOTIFYs ``run_id seq`` on ``EVENTS_CHANNEL`` at commit
  (``Store._announce``); one LISTEN connection per process hears it within milliseconds.
- SQLite (one machine): a short poll of ``run.last_seq`` for the runs someone here follows,
  one indexed query every ``poll_s`` and only while there are followers.

Either way the store stays the source of truth: a lost notification costs latency (the
follower's idle re-read still finds the event), never an event.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlmodel import col

from core.runs.events import EventBus
from core.store.db import EVENTS_CHANNEL, Store
from core.store.models import Run

logger = logging.getLogger(__name__)


class StoreWatcher:
    def __init__(
        self, store: Store, bus: EventBus, *, poll_s: float = 0.1, retry_s: float = 1.0
    ) -> None:
        self.store = store
        self.bus = bus
        self.poll_s = poll_s
        self.retry_s = retry_s
        self.listening = threading.Event()  # set while the LISTEN connection is up
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        target = self._listen_loop if self.store.is_postgresql else self._poll_loop
        self._thread = threading.Thread(target=target, name="hatchery-store-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # SQLite (and any other store): poll -----------------------------------------------

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._poke_newer(self.bus.followed_runs())
            except Exception:
                logger.warning("polling the store for new events failed", exc_info=True)

    def _poke_newer(self, followed: dict[str, int]) -> None:
        """Poke the followed runs whose stored last seq is past what this bus has seen."""
        if not followed:
            return
        with self.store.read_session() as session:
            rows = session.execute(
                select(col(Run.id), col(Run.last_seq)).where(col(Run.id).in_(list(followed)))
            ).all()
        for run_id, seq in rows:
            if seq > followed.get(run_id, 0):
                self.bus.poke(run_id, seq)

    # PostgreSQL: LISTEN ---------------------------------------------------------------

    def _listen_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception:
                logger.warning("listening for run events failed; reconnecting", exc_info=True)
            finally:
                self.listening.clear()
            self._stop.wait(self.retry_s)

    def _listen(self) -> None:
        import psycopg

        with psycopg.connect(_libpq_url(self.store), autocommit=True) as connection:
            connection.execute(f"LISTEN {EVENTS_CHANNEL}")
            self.listening.set()
            # Notifications sent while we were (re)connecting are gone: catch up from the rows.
            self._poke_newer(self.bus.followed_runs())
            while not self._stop.is_set():
                for note in connection.notifies(timeout=0.5):
                    self._heard(note.payload)

    def _heard(self, payload: str) -> None:
        try:
            origin, run_id, seq = payload.split(" ")
            number = int(seq)
        except ValueError:
            logger.debug("ignoring notification %r", payload)
            return
        if origin != self.store.origin:
            self.bus.poke(run_id, number)


def _libpq_url(store: Store) -> str:
    """The store's SQLAlchemy URL as a plain libpq one (options such as search_path kept)."""
    url: Any = make_url(store.engine.url.render_as_string(hide_password=False))
    return str(url.set(drivername="postgresql").render_as_string(hide_password=False))
