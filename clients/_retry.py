"""When to retry a request, and how long to wait first (no I/O: the clients do the waiting).

A retry must never change what the server did. So:

- a connection that could not be made (nothing was sent) is always retried;
- a connection that broke after the request went out is retried only for idempotent
  requests: reads, and run submissions, which carry an ``Idempotency-Key`` the server
  deduplicates on;
- 429 and 503 mean the server refused the request without acting on it: always retried,
  after ``Retry-After`` when the server gives one; 502 and 504 (a proxy that may have passed
  the request on) only when idempotent;
- 409 ``idempotency_key_in_use`` means the first attempt is still being recorded: retried.

Without ``Retry-After`` the wait is exponential backoff with full jitter, so many clients
refused at once do not come back at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

_REFUSED = frozenset({429, 503})  # the server did not act on the request
_GATEWAY = frozenset({502, 504})  # a proxy may have passed it on
_RETRY_CONFLICTS = frozenset({"idempotency_key_in_use"})


@dataclass(frozen=True)
class RetryPolicy:
    """``max_attempts`` counts the first try; 1 disables retries."""

    max_attempts: int = 4
    backoff_base_s: float = 0.25
    backoff_max_s: float = 8.0
    # A server asking for a longer pause than this is not waited for: the error surfaces.
    max_retry_after_s: float = 60.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.backoff_base_s < 0 or self.backoff_max_s < 0:
            raise ValueError("backoff times must not be negative")

    def can_retry(self, attempt: int) -> bool:
        """Whether another try may follow try number ``attempt`` (counted from 1)."""
        return attempt < self.max_attempts

    def retry_status(self, status: int, *, idempotent: bool, code: str | None = None) -> bool:
        if status in _REFUSED:
            return True
        if status in _GATEWAY:
            return idempotent
        return status == 409 and idempotent and code in _RETRY_CONFLICTS

    def retry_transport(self, *, sent: bool, idempotent: bool) -> bool:
        """``sent``: the request may have reached the server before the connection failed."""
        return idempotent or not sent

    def delay(self, attempt: int, retry_after: float | None = None) -> float | None:
        """Seconds to wait before try ``attempt + 1``; None when the wait is not worth it."""
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_after_s else None
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        return self.rng.uniform(0.0, ceiling)
