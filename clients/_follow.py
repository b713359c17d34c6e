"""Following a run over its WebSocket: where to resume, and when it is over (no I/O).

The server replays every event with ``seq > after`` and then streams live ones, closing with
1000 after the terminal status event. A client whose connection drops reconnects with
``?after=<last seq it saw>``; ``EventCursor`` remembers that seq, drops anything at or below
it (so a resumed stream never repeats an event) and says when the run has ended.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from clients.errors import HatcheryError, ws_close_error
from core.store.models import RunEventPublic

logger = logging.getLogger(__name__)

# Messages that are part of the socket's housekeeping, not events of the run.
_CONTROL_TYPES = frozenset({"ping", "pong"})
NORMAL_CLOSURE = 1000


class EventCursor:
    """The state of one ``monitor_*_ws`` call across its connections."""

    def __init__(self, run_id: str, *, after: int = 0) -> None:
        self.run_id = run_id
        self.last_seq = after
        self.finished = False
        self.connections = 0
        self.failures = 0  # consecutive connections that broke before a new event arrived

    def connected(self) -> None:
        self.connections += 1

    def accept(self, text: str | bytes) -> RunEventPublic | None:
        """The event in this message, or None for housekeeping and already-seen events."""
        data: Any = json.loads(text)
        if not isinstance(data, dict):
            raise HatcheryError(f"unexpected WebSocket message: {str(text)[:100]!r}")
        if "seq" not in data:
            self._control(data)
            return None
        event = RunEventPublic.model_validate(data)
        if event.seq <= self.last_seq:
            return None  # replayed after a resume: already delivered
        if event.seq != self.last_seq + 1:
            missing = (self.last_seq + 1, event.seq - 1)
            logger.warning("run %s: events %d..%d missing", self.run_id, *missing)
        self.last_seq = event.seq
        self.failures = 0
        self.finished = event.is_terminal
        return event

    def closed(self, code: int | None, reason: str = "") -> None:
        """Record a close; raises for closes that mean "stop" (unknown run, bad key)."""
        error = ws_close_error(code, reason)
        if error is not None:
            raise error
        if code == NORMAL_CLOSURE:
            # The server ends the stream only once the run is over (possibly before ``after``).
            self.finished = True
        else:
            self.failures += 1
            logger.info(
                "run %s: WebSocket closed (%s); resuming after seq %d",
                self.run_id,
                code,
                self.last_seq,
            )

    def broken(self, error: BaseException) -> None:
        """Record a connection that failed or went silent without a close frame."""
        self.failures += 1
        logger.info(
            "run %s: WebSocket lost (%r); resuming after seq %d", self.run_id, error, self.last_seq
        )

    def _control(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind in _CONTROL_TYPES:
            return
        error = data.get("error")
        if kind == "error" and isinstance(error, dict):
            raise HatcheryError(str(error.get("message")), code=error.get("code"), body=data)
        logger.debug("run %s: ignoring WebSocket message %r", self.run_id, data)
