"""What a followed run has streamed so far, for its current attempt only (no I/O).

A run whose worker was lost is retried, and its stream then holds the events of both attempts;
the retry begins with an ``attempt`` event (``{"attempt": n, "reason": ...}``). Joining the
token text of every event would repeat the text the first attempt got to, so ``RunTranscript``
starts over at each ``attempt`` event: token text per choice, metric series, test cases.

    transcript = RunTranscript()
    for event in client.monitor_generation_ws(run.id):
        transcript.feed(event)
    print(transcript.text())
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clients.models import RunEventPublic


@dataclass
class RunTranscript:
    attempt: int = 1
    restarts: list[dict[str, Any]] = field(default_factory=list)  # the attempt events' data
    # (prompt_index, choice) -> text pieces
    tokens: dict[tuple[int, int], list[str]] = field(default_factory=dict)
    metrics: dict[str, list[tuple[Any, Any]]] = field(default_factory=dict)  # name -> (step, v)
    cases: list[dict[str, Any]] = field(default_factory=list)

    def feed(self, event: RunEventPublic) -> bool:
        """Take one event; True when it started a new attempt (and the state was reset)."""
        data = event.data
        if event.type == "attempt":
            self.restarts.append(dict(data))
            self._start(int(data.get("attempt") or event.attempt))
            return True
        if event.attempt > self.attempt:  # resumed past the marker: still a new attempt
            self._start(event.attempt)
        if event.type == "token":
            key = (int(data.get("prompt_index") or 0), int(data.get("choice") or 0))
            self.tokens.setdefault(key, []).append(str(data.get("text")))
        elif event.type == "metric":
            series = self.metrics.setdefault(str(data.get("name")), [])
            series.append((data.get("step"), data.get("value")))
        elif event.type == "case":
            self.cases.append(dict(data))
        return False

    def _start(self, attempt: int) -> None:
        self.attempt = attempt
        self.tokens, self.metrics, self.cases = {}, {}, []

    def text(self, prompt_index: int = 0, choice: int = 0) -> str:
        """The token text of one choice of one prompt, streamed by the current attempt."""
        return "".join(self.tokens.get((prompt_index, choice), []))
