"""A scheduler's statistics: what its lanes record as they work, and the snapshot it reports.

The lanes call a `StatsRecorder`'s methods as things happen (a prompt chunk read, a first
token, a step's tokens, a request's end); the recorder keeps the totals and recent latencies
under its own lock and forwards each event to the optional `EngineObserver` (the app's
Prometheus metrics), outside that lock.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .state_memory import SlotPlan

logger = logging.getLogger(__name__)

THROUGHPUT_WINDOW_S = 10.0
LATENCY_WINDOW = 1024  # recent TTFT / inter-token samples kept for the statistics


class EngineObserver:
    """Metrics callbacks, run on the lane threads; override the ones you need.

    Any object with some of these methods works as well. Exceptions are logged and ignored.
    `on_finish` is called for requests that end normally (stop or length), not for aborted or
    failed ones; `on_request_end` for every request, however it ended, with each choice's
    finish reason. An observer with ``for_model(name)`` (`engine.PerModelObserver`) gives
    the engine one observer per model's scheduler.
    """

    def on_first_token(self, ttft_s: float) -> None: ...

    def on_token(self, inter_token_s: float) -> None: ...

    def on_prefill(self, tokens: int) -> None: ...

    def on_finish(self, e2e_s: float, prompt_tokens: int, completion_tokens: int) -> None: ...

    def on_request_end(
        self, finish_reasons: list[str], prompt_tokens: int, completion_tokens: int
    ) -> None: ...


@dataclasses.dataclass(frozen=True)
class LaneLoad:
    """What one lane holds, as it last published it (after each step)."""

    running: int = 0  # sequences (choices) in decode slots
    running_requests: int = 0  # requests with a sequence in decode slots
    prefilling: int = 0  # requests whose prompt is being read
    prefill_states: int = 0  # prefilling requests that hold a state (at most one)
    prefill_allocated: int = 0  # prefill states allocated: the lane's kept buffer (0 or 1)
    slots: int = 0  # allocated state slots


@dataclasses.dataclass
class SchedulerStats:
    model: str
    running: int  # sequences (choices) in decode slots
    running_requests: int  # requests with a sequence in decode slots (vLLM's "running")
    waiting: int  # requests queued for admission
    prefilling: int  # requests whose prompt is being read
    slots: int  # allocated state slots (each lane's pool is allocated whole at first use)
    running_per_lane: list[int]  # running sequences of each lane
    max_batch: int
    max_sequences: int  # slots planned: max_batch, or fewer where the state budget says so
    free_slots: int  # slots not taken by admitted choices: room for waiting requests
    state_bytes_per_sequence: int
    max_state_memory: int  # the budget (generation.max_state_memory or its default)
    state_memory_in_use: int  # bytes of state held by running and prefilling sequences
    state_memory_allocated: int  # bytes of the lanes' slot pools and prefill states
    total_requests: int
    finished_requests: int
    aborted_requests: int
    prompt_tokens: int
    tokens_generated: int
    tokens_per_s: float  # over the last THROUGHPUT_WINDOW_S seconds
    ttft_mean_s: float | None
    ttft_p50_s: float | None
    inter_token_mean_s: float | None
    inter_token_p50_s: float | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class StatsRecorder:
    """Totals and recent latencies of one scheduler; every method is thread-safe."""

    def __init__(self, observer: EngineObserver | None = None) -> None:
        self.observer = observer
        self._lock = threading.Lock()
        self._started_at = time.monotonic()
        self._requests = self._finished = self._aborted = 0
        self._prompt_tokens = self._generated = 0
        self._token_window: deque[tuple[float, int]] = deque()  # (time, tokens of a step)
        self._ttft: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._itl: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._e2e: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def restart_clock(self) -> None:
        """Measure throughput from now (the scheduler's start)."""
        with self._lock:
            self._started_at = time.monotonic()

    # Recording (lane threads) -----------------------------------------------------------------

    def request_submitted(self) -> None:
        with self._lock:
            self._requests += 1

    def prompt_read(self, tokens: int) -> None:
        self._observe("on_prefill", tokens)
        with self._lock:
            self._prompt_tokens += tokens

    def first_token(self, ttft_s: float) -> None:
        with self._lock:
            self._ttft.append(ttft_s)
        self._observe("on_first_token", ttft_s)

    def token_gaps(self, gaps: list[float]) -> None:
        """The inter-token gaps of one decode step, one per running sequence."""
        with self._lock:
            self._itl.extend(gaps)
        for gap in gaps:
            self._observe("on_token", gap)

    def step_generated(self, tokens: int) -> None:
        """Tokens delivered by one lane step (first tokens included)."""
        with self._lock:
            self._generated += tokens
            if tokens:
                self._token_window.append((time.monotonic(), tokens))

    def request_ended(
        self,
        *,
        normal: bool,
        e2e_s: float,
        finish_reasons: list[str],
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        """A request ended (admitted or not); `normal`: every choice stopped or reached its
        length (not aborted, not failed)."""
        with self._lock:
            if normal:
                self._finished += 1
                self._e2e.append(e2e_s)
            else:
                self._aborted += 1
        if normal:
            self._observe("on_finish", e2e_s, prompt_tokens, completion_tokens)
        self._observe("on_request_end", finish_reasons, prompt_tokens, completion_tokens)

    # Reading ----------------------------------------------------------------------------------

    def retry_after(self, *, waiting: int, max_batch: int) -> float:
        """A rough wait: the recent mean request latency, scaled by the queue per slot."""
        with self._lock:
            if not self._e2e:
                return 1.0
            estimate = statistics.fmean(self._e2e) * waiting / max_batch
        return min(max(estimate, 1.0), 60.0)

    def snapshot(
        self,
        *,
        model: str,
        waiting: int,
        loads: list[LaneLoad],
        max_batch: int,
        plan: SlotPlan,
        free_slots: int,
    ) -> SchedulerStats:
        with self._lock:
            now = time.monotonic()
            while self._token_window and self._token_window[0][0] < now - THROUGHPUT_WINDOW_S:
                self._token_window.popleft()
            span = min(THROUGHPUT_WINDOW_S, max(now - self._started_at, 1e-3))
            recent = sum(n for _, n in self._token_window)
            ttft, itl = list(self._ttft), list(self._itl)
            totals = (self._requests, self._finished, self._aborted)
            tokens = (self._prompt_tokens, self._generated)
        return SchedulerStats(
            model=model,
            running=sum(load.running for load in loads),
            running_requests=sum(load.running_requests for load in loads),
            waiting=waiting,
            prefilling=sum(load.prefilling for load in loads),
            slots=sum(load.slots for load in loads),
            running_per_lane=[load.running for load in loads],
            max_batch=max_batch,
            max_sequences=plan.sequences,
            free_slots=free_slots,
            state_bytes_per_sequence=plan.state_bytes,
            max_state_memory=plan.max_state_memory,
            state_memory_in_use=plan.state_bytes
            * sum(load.running + load.prefill_states for load in loads),
            state_memory_allocated=plan.state_bytes
            * sum(load.slots + load.prefill_allocated for load in loads),
            total_requests=totals[0],
            finished_requests=totals[1],
            aborted_requests=totals[2],
            prompt_tokens=tokens[0],
            tokens_generated=tokens[1],
            tokens_per_s=recent / span,
            ttft_mean_s=statistics.fmean(ttft) if ttft else None,
            ttft_p50_s=statistics.median(ttft) if ttft else None,
            inter_token_mean_s=statistics.fmean(itl) if itl else None,
            inter_token_p50_s=statistics.median(itl) if itl else None,
        )

    def _observe(self, name: str, *args: float | int | list[str]) -> None:
        callback = getattr(self.observer, name, None)
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            logger.exception("engine observer %s failed", name)
