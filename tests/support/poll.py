"""Polling until a condition holds: the one helper tests use to wait for state they cannot
await (a run's status over HTTP, a server coming up, a counter in another thread)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def poll_until(
    fetch: Callable[[], T],
    done: Callable[[T], Any] = bool,
    *,
    timeout: float = 15.0,
    interval: float = 0.02,
    what: str | Callable[[], str] = "the condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call `fetch` every `interval` s until `done(value)` is true; return that value.

    After `timeout` s an AssertionError names `what` (or calls it, for a description that is
    costly to build, such as a log) and the last value fetched, so a test that times out says
    where things stood. Exceptions of the types in `ignore` (a server that does not accept
    connections yet) count as "not yet"; any other exception, including an assertion inside
    `fetch`, ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    last: Any = "nothing fetched"
    while True:
        try:
            value = fetch()
        except ignore as exc:
            last = exc
        else:
            if done(value):
                return value
            last = value
        if time.monotonic() >= deadline:
            described = what() if callable(what) else what
            raise AssertionError(
                f"timed out after {timeout} s waiting for {described}; last: {last!r}"
            )
        time.sleep(interval)
