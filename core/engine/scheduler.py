"""Continuous batching for one model: admission to its lanes, and its statistics.

    scheduler = Scheduler(lm, max_batch=32, max_waiting=256).start()
    stream = scheduler.submit(prompt_ids, SamplingParams(max_tokens=64, seed=1))
    async for event in stream:              # or, in a worker thread: stream.iter_sync()
        print(event.choice, event.text, event.finish_reason)

`submit` queues a request; the lanes (`core.engine.lane`, whose docstring tells how a step
runs and why there may be several) take requests from the waiting queue, oldest first, while
their choices fit in `max_batch`, or in fewer slots where `max_state_memory` cannot hold so
many states (`core.engine.state_memory` plans them). Admission keeps the
lanes' loads balanced: a lane takes a request only if it ends with at most its share of the
admitted choices, or it is the least loaded. `stats()` reports the queue, each lane's load,
the state memory and the `StatsRecorder`'s totals.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque

from . import kernels
from .lane import Lane, Request
from .language_model import PREFILL_CHUNK, LanguageModel
from .sampling import SamplingParams
from .sequence import FINISH_ABORT
from .state_memory import plan_slots, state_bytes
from .stats import EngineObserver, SchedulerStats, StatsRecorder
from .stream import GenerationStream

logger = logging.getLogger(__name__)


class EngineOverloaded(RuntimeError):
    """The waiting queue is full; the client should retry after `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Scheduler:
    """Continuous batching of one model's requests on its lane threads (one by default).

    `decode_threads`: how many threads a lane's step may split over while it decodes alone
    (default: one per core); the engine passes `model.decode_threads`.
    """

    def __init__(
        self,
        lm: LanguageModel,
        *,
        max_batch: int,
        max_waiting: int,
        prefill_chunk: int = PREFILL_CHUNK,
        prefill_budget: int = 2 * PREFILL_CHUNK,
        observer: EngineObserver | None = None,
        lanes: int = 1,
        decode_threads: int | None = None,
        max_state_memory: int | None = None,
    ) -> None:
        """`max_state_memory`: bytes of recurrent state it may hold (None: what `max_batch`
        slots and the lanes' prefills need); raises StateMemoryTooSmall when it cannot hold
        one sequence."""
        if min(max_batch, max_waiting, prefill_chunk, lanes) < 1:
            raise ValueError("max_batch, max_waiting, prefill_chunk and lanes must be positive")
        if prefill_budget < prefill_chunk:
            raise ValueError("prefill_budget must be at least prefill_chunk")
        self.lm = lm
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.prefill_chunk = prefill_chunk
        self.prefill_budget = prefill_budget
        self.observer = observer
        self._stats = StatsRecorder(observer)
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._waiting: deque[Request] = deque()
        per_sequence = state_bytes(lm.config)
        if max_state_memory is None:
            max_state_memory = per_sequence * (max_batch + 1) * min(lanes, max_batch)
        self.plan = plan_slots(
            state_bytes=per_sequence,
            max_state_memory=max_state_memory,
            max_batch=max_batch,
            lanes=lanes,
            model=lm.name,
        )
        self._lanes = [
            Lane(
                i,
                lm,
                admission=self,
                stats=self._stats,
                slots=self.plan.sequences,
                prefill_chunk=prefill_chunk,
                prefill_budget=prefill_budget,
                decode_threads=decode_threads or kernels.threads(),
            )
            for i in range(self.plan.lanes)
        ]
        count = len(self._lanes)
        self._started = False
        self._stopping = False
        # Admission, under the lock: choices admitted and not finished, in all and per lane.
        self._reserved = 0
        self._reserved_by_lane = [0] * count

    @property
    def lanes(self) -> int:
        """Decode loops running side by side, each on its own thread and slots."""
        return len(self._lanes)

    @property
    def running(self) -> bool:
        return any(lane.alive for lane in self._lanes)

    def start(self) -> Scheduler:
        with self._lock:
            if self._stopping:
                raise RuntimeError("a stopped scheduler cannot be restarted")
            if not self._started:
                self._started = True
                self._stats.restart_clock()
                for lane in self._lanes:
                    suffix = f"-lane{lane.index}" if lane.index else ""
                    lane.start(f"hatchery-scheduler-{self.lm.name}{suffix}")
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """Abort everything pending (finish_reason "abort") and join the threads."""
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify_all()
            started = self._started
        if not started:
            self.abort_waiting()
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        for lane in self._lanes:
            if not lane.join(None if deadline is None else max(0.0, deadline - time.monotonic())):
                logger.warning("scheduler for %s did not stop within %s s", self.lm.name, timeout)

    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        request_id: str | None = None,
        prompt_index: int = 0,
    ) -> GenerationStream:
        """Queue a request; raises ValueError for a bad prompt, EngineOverloaded when full."""
        ids = list(prompt_ids)
        vocab_size = self.lm.config.vocab_size
        if not ids:
            raise ValueError("prompt must not be empty: BDH needs at least one byte of context")
        if any(not isinstance(i, int) or not 0 <= i < vocab_size for i in ids):
            raise ValueError(f"prompt token ids must be integers in [0, {vocab_size})")
        if params.n > self.plan.sequences:
            raise ValueError(
                f"n={params.n} exceeds the engine's max batch of {self.plan.sequences} "
                "(generation.max_batch, within generation.max_state_memory)"
            )
        stream = GenerationStream(request_id or uuid.uuid4().hex, ids, params, self._wake)
        request = Request(stream, prompt_index)
        with self._wakeup:
            if self._stopping:
                raise RuntimeError(f"the scheduler for {self.lm.name} is stopped")
            if len(self._waiting) >= self.max_waiting:
                raise EngineOverloaded(
                    f"{len(self._waiting)} requests are already waiting for {self.lm.name}",
                    retry_after=self._stats.retry_after(
                        waiting=len(self._waiting), max_batch=self.plan.sequences
                    ),
                )
            self._waiting.append(request)
            self._stats.request_submitted()
            self._wakeup.notify_all()
        return stream

    def stats(self) -> SchedulerStats:
        with self._lock:
            waiting, reserved = len(self._waiting), self._reserved
        return self._stats.snapshot(
            model=self.lm.name,
            waiting=waiting,
            loads=[lane.load for lane in self._lanes],
            max_batch=self.max_batch,
            plan=self.plan,
            free_slots=self.plan.sequences - reserved,
        )

    # The lanes' side (`lane.Admission`) --------------------------------------------------------

    def next_admitted(self, lane: Lane) -> list[Request] | None:
        with self._wakeup:
            self._wakeup.wait_for(lambda: self._has_work_locked(lane))
            if self._stopping:
                return None
            dropped = [r for r in self._waiting if r.stream.abort_requested]
            for request in dropped:
                self._waiting.remove(request)
            admitted = []
            while self._waiting and self._fits_locked(lane, self._waiting[0].params.n):
                request = self._waiting.popleft()
                request.live = request.params.n
                self._reserved += request.live
                self._reserved_by_lane[lane.index] += request.live
                admitted.append(request)
        for request in dropped:
            self._end_unadmitted(request, FINISH_ABORT)
        return admitted

    def retire(self, lane: Lane, choices: int) -> None:
        if not choices:
            return
        with self._lock:
            self._reserved -= choices
            self._reserved_by_lane[lane.index] -= choices
            if self._waiting:
                self._wakeup.notify_all()

    def decoding_elsewhere(self, lane: Lane) -> bool:
        return any(other.decoding for other in self._lanes if other is not lane)

    def abort_waiting(self) -> None:
        with self._lock:
            waiting = list(self._waiting)
            self._waiting.clear()
        for request in waiting:
            self._end_unadmitted(request, FINISH_ABORT)

    # Admission ----------------------------------------------------------------------------------

    def _wake(self) -> None:
        with self._wakeup:
            self._wakeup.notify_all()

    def _has_work_locked(self, lane: Lane) -> bool:
        """Whether `lane` should run a step now (called under the lock)."""
        if self._stopping or lane.busy:
            return True
        if any(r.stream.abort_requested for r in self._waiting):
            return True  # the first lane awake drops it
        return bool(self._waiting) and self._fits_locked(lane, self._waiting[0].params.n)

    def _fits_locked(self, lane: Lane, n: int) -> bool:
        """Whether `lane` may take a request of `n` choices: they fit in the slots, and the
        lanes stay balanced (it ends with at most its share, or it is the least loaded)."""
        if self._reserved + n > self.plan.sequences:
            return False
        share = -(-(self._reserved + n) // len(self._lanes))  # ceil
        mine = self._reserved_by_lane[lane.index]
        others = [r for i, r in enumerate(self._reserved_by_lane) if i != lane.index]
        return mine + n <= share or mine <= min(others, default=0)

    def _end_unadmitted(self, request: Request, reason: str) -> None:
        """End a request that never reached a lane (aborted while waiting, or at shutdown)."""
        outputs = request.end_empty(reason)
        self._stats.request_ended(
            normal=False,
            e2e_s=time.monotonic() - request.stream.submitted_at,
            finish_reasons=[reason] * len(outputs),
            prompt_tokens=len(request.prompt_ids),
            completion_tokens=0,
        )
        request.stream.end(outputs)
