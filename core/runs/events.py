"""Run events: their types, live fan-out to subscribers, and the gap-free follow stream.

Events are persisted before they are published, so the store is the source of truth and the
bus is only a low-latency hint. That lets the bus stay small and strict: each subscriber gets a
bounded queue, and a subscriber that does not drain it is dropped rather than allowed to grow
memory. A dropped follower just re-reads from the store where it left off.

Events written by other processes (a Ray worker, another API replica) reach the bus as a
*poke* from the store watcher (``core.runs.watch``): "run R has events up to seq S"; a
follower behind S re-reads the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncGenerator, Awaitable, Callable
from enum import StrEnum
from typing import Final

from core.store.models import RunEventPublic

logger = logging.getLogger(__name__)


class EventType(StrEnum):
    status = "status"  # {status, ...}: every status change
    progress = "progress"  # {progress, message}
    log = "log"  # {level, message}
    token = "token"  # {choice, text}
    metric = "metric"  # {name, value, step, unit}
    case = "case"  # {name, status, duration_ms, details}
    result = "result"  # {summary}
    error = "error"  # {code, message}
    attempt = "attempt"  # {attempt, reason}: a retry starts; drop the previous attempt's state


class _Dropped:
    """Queued to a subscriber that fell too far behind."""


DROPPED: Final = _Dropped()


class Poke:
    """Queued to subscribers when the store has events of their run up to ``seq``."""

    __slots__ = ("seq",)

    def __init__(self, seq: int) -> None:
        self.seq = seq


class Subscription:
    """One follower's bounded queue of live events for one run."""

    def __init__(self, run_id: str, maxsize: int) -> None:
        self.run_id = run_id
        self.queue: asyncio.Queue[RunEventPublic | _Dropped | Poke] = asyncio.Queue(maxsize)
        self.dropped = False

    async def next(self, timeout: float | None) -> RunEventPublic | _Dropped | Poke | None:
        """The next live event, DROPPED if we fell behind, or None after ``timeout`` idle."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None

    def _offer(self, event: RunEventPublic | Poke) -> bool:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self._drop()
            return False
        return True

    def _drop(self) -> None:
        # Free what it holds at once and leave one marker telling the reader to resync.
        self.dropped = True
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(DROPPED)


class EventBus:
    """Fan-out of live run events to subscribers on one event loop.

    ``publish`` may be called from any thread (job workers publish from theirs); delivery
    always happens on the loop via ``call_soon_threadsafe``.
    """

    def __init__(self, *, queue_size: int = 1000) -> None:
        self.queue_size = queue_size
        self.dropped_total = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribers: dict[str, set[Subscription]] = defaultdict(set)
        # Highest seq this bus has seen per followed run (published here or poked).
        self._latest: dict[str, int] = {}

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def subscribe(self, run_id: str) -> Subscription:
        """Call on the loop; the subscription sees every event published after this call."""
        subscription = Subscription(run_id, self.queue_size)
        self._subscribers[run_id].add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(subscription.run_id)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[subscription.run_id]
                self._latest.pop(subscription.run_id, None)

    def publish(self, event: RunEventPublic) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # nobody can be listening; the event is in the store already
        with contextlib.suppress(RuntimeError):  # the loop closed since the check
            loop.call_soon_threadsafe(self._deliver, event)

    def poke(self, run_id: str, seq: int) -> None:
        """Another process stored events of ``run_id`` up to ``seq`` (any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._deliver_poke, run_id, seq)

    def followed_runs(self) -> dict[str, int]:
        """Run id -> highest seq seen here, for every run with followers (any thread)."""
        latest = dict(self._latest)
        return {run_id: latest.get(run_id, 0) for run_id in list(self._subscribers)}

    # Diagnostics (stats, tests); safe to call from other threads: they only copy and count.

    def subscriber_count(self, run_id: str | None = None) -> int:
        if run_id is not None:
            return len(self._subscribers.get(run_id, ()))
        return sum(len(subs) for subs in list(self._subscribers.values()))

    def buffered_count(self) -> int:
        """Events held in all subscriber queues now (bounded by subscribers x queue_size)."""
        subscriptions = [sub for subs in list(self._subscribers.values()) for sub in list(subs)]
        return sum(sub.queue.qsize() for sub in subscriptions)

    def _deliver(self, event: RunEventPublic) -> None:
        self._offer_all(event.run_id, event.seq, event)

    def _deliver_poke(self, run_id: str, seq: int) -> None:
        if seq > self._latest.get(run_id, 0):
            self._offer_all(run_id, seq, Poke(seq))

    def _offer_all(self, run_id: str, seq: int, item: RunEventPublic | Poke) -> None:
        subscribers = self._subscribers.get(run_id)
        if not subscribers:
            return
        self._latest[run_id] = max(seq, self._latest.get(run_id, 0))
        for subscription in list(subscribers):
            if not subscription._offer(item):
                self.unsubscribe(subscription)
                self.dropped_total += 1
                logger.warning("dropped a slow subscriber of run %s", run_id)


# (events with seq > after, whether the run had ended when they were read)
LoadAfter = Callable[[int], Awaitable[tuple[list[RunEventPublic], bool]]]


async def follow(
    bus: EventBus, run_id: str, load_after: LoadAfter, *, after: int = 0, idle_s: float = 15.0
) -> AsyncGenerator[RunEventPublic | None, None]:
    """Every event of a run with seq > ``after``, stored then live, without gap or duplicate.

    Yields None after ``idle_s`` without events (the caller pings) and stops after the
    terminal status event. The subscription is taken *before* the store is read, so an event
    committed in between arrives live and is skipped by seq if the backlog already had it.
    """
    last = after
    while True:
        subscription = bus.subscribe(run_id)
        try:
            ended = False
            while True:  # the backlog, page by page
                events, ended = await load_after(last)
                for event in events:
                    yield event
                    last = event.seq
                    if event.is_terminal:
                        return
                if not events:
                    break
            if ended:
                return  # ended before ``after``: nothing more will come
            async for live in _live(subscription, last, idle_s):
                yield live
                if live is not None:
                    last = live.seq
                    if live.is_terminal:
                        return
        finally:
            bus.unsubscribe(subscription)
        # Dropped, out of order or idle: take a fresh subscription and resync from the store.


async def _live(
    subscription: Subscription, last: int, idle_s: float
) -> AsyncGenerator[RunEventPublic | None, None]:
    while True:
        item = await subscription.next(idle_s)
        if item is None:
            yield None
            # Idle: re-read the store too. Events written by another process (a worker on
            # another replica, a recovery) reach this process's bus only that way.
            return
        elif isinstance(item, _Dropped):
            return
        elif isinstance(item, Poke):
            if item.seq > last:
                return  # stored by another process: read it from the store
        elif item.seq <= last:
            continue  # already sent from the backlog
        elif item.seq > last + 1:
            return  # a gap: the missing events are in the store
        else:
            last = item.seq
            yield item
