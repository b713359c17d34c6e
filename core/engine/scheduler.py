"""Continuous batching for one model: a scheduler thread, a slot pool and generation streams.

    scheduler = Scheduler(lm, max_batch=32, max_waiting=256).start()
    stream = scheduler.submit(prompt_ids, SamplingParams(max_tokens=64, seed=1))
    async for event in stream:              # or, in a worker thread: stream.iter_sync()
        print(event.choice, event.text, event.finish_reason)

Lane threads make every torch call: one by default, or several side by side (`lanes`), each
with its own slot pool and sequences, sharing the waiting queue and the limits. Each step a
lane

1. drops aborted requests and admits waiting ones while slots are free;
2. prefills admitted prompts chunk by chunk, at most `prefill_budget` tokens per step, so
   running streams keep flowing while a long prompt is read;
3. runs one batched `decode_step` over all running sequences, whose states are the view
   `pool[:, :B]` of a slot pool kept compacted (no gather or scatter copies);
4. samples each row with its own `SequenceDecoder` and delivers the text to its stream;
5. frees finished sequences by moving the last slot's state into the hole (one state copy
   per finished sequence, never one per token).

Requests go to the lanes so that their loads stay balanced. On the CPU the fused decode step
runs without the GIL, so with two lanes on two cores one lane samples and delivers (Python)
while the other decodes, and neither waits for the other at the end of its step; a single
lane instead splits its step over helper threads (`kernels.run_split`) and samples alone.

Prefill chunks start at multiples of `prefill_chunk` whatever else is running, and every
sequence draws from its own generator, so a seeded request gives the same tokens alone or in
any batch, and the same tokens as `LanguageModel.complete` with the same chunk size.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import statistics
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import torch

from .language_model import PREFILL_CHUNK, LanguageModel
from .sampling import SamplingParams
from .sequence import (
    FINISH_ABORT,
    CompletionOutput,
    SequenceDecoder,
    TokenLogprob,
    accept_rows,
)

logger = logging.getLogger(__name__)

FINISH_ERROR = "error"
INITIAL_SLOTS = 4
THROUGHPUT_WINDOW_S = 10.0
LATENCY_WINDOW = 1024  # recent TTFT / inter-token samples kept for the statistics


class EngineOverloaded(RuntimeError):
    """The waiting queue is full; the client should retry after `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GenerationError(RuntimeError):
    """The engine failed while generating; raised by a stream after its last event."""


@dataclasses.dataclass
class StreamEvent:
    """New output of one choice: text that became final, the tokens behind it, and, on the
    last event of the choice, why it finished. Several tokens may arrive in one event."""

    choice: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None


class EngineObserver:
    """Metrics callbacks, run on the scheduler thread; override the ones you need.

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


@dataclasses.dataclass
class SchedulerStats:
    model: str
    running: int  # sequences (choices) in decode slots
    running_requests: int  # requests with a sequence in decode slots (vLLM's "running")
    waiting: int  # requests queued for admission
    prefilling: int  # requests whose prompt is being read
    slots: int  # allocated state slots (each lane's pool grows up to max_batch)
    running_per_lane: list[int]  # running sequences of each lane
    max_batch: int
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


class GenerationStream:
    """The output of one request, fed by the scheduler thread, read by one consumer.

    Read it with `async for event in stream` on an event loop, or `stream.iter_sync()` in a
    thread; then `outputs()`. `abort()` may be called from any thread. Used as a (sync or
    async) context manager, the stream is aborted on exit unless it finished, so a consumer
    that goes away (a disconnected client) frees its slots.
    """

    def __init__(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        wake_scheduler: Callable[[], None],
    ) -> None:
        self.request_id = request_id
        self.prompt_ids = prompt_ids
        self.params = params
        self.submitted_at = time.monotonic()
        self.first_token_time: float | None = None  # time.monotonic() of the first token
        self._wake_scheduler = wake_scheduler
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._events: deque[StreamEvent] = deque()
        self._open: dict[int, StreamEvent] = {}  # choice -> its queued event still growing
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        self._finished = False
        self._abort_requested = False
        self._error: BaseException | None = None
        self._outputs: list[CompletionOutput] = []

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def abort_requested(self) -> bool:
        return self._abort_requested

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.submitted_at

    def abort(self) -> None:
        """Stop generating; unfinished choices end with finish_reason "abort" within a step."""
        with self._lock:
            if self._finished or self._abort_requested:
                return
            self._abort_requested = True
        self._wake_scheduler()

    def outputs(self) -> list[CompletionOutput]:
        """One output per choice, by index; only once the stream has finished."""
        if not self._finished:
            raise RuntimeError("the stream has not finished")
        if self._error is not None:
            raise GenerationError(str(self._error)) from self._error
        return list(self._outputs)

    # Consumers --------------------------------------------------------------------------------

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> StreamEvent:
        while True:
            with self._lock:
                event = self._pop_locked()
                if event is not None:
                    return event
                if self._finished:
                    self._raise_error_locked()
                    raise StopAsyncIteration
                loop = asyncio.get_running_loop()
                future: asyncio.Future[None] = loop.create_future()
                self._waiter = (loop, future)
            try:
                await future
            finally:
                with self._lock:
                    if self._waiter is not None and self._waiter[1] is future:
                        self._waiter = None

    def iter_sync(self, timeout: float | None = None) -> Iterator[StreamEvent]:
        """Events as they come, for code in worker threads; `timeout` bounds each wait."""
        while True:
            with self._ready:
                if not self._ready.wait_for(lambda: self._events or self._finished, timeout):
                    raise TimeoutError(f"no event from stream {self.request_id} in {timeout} s")
                event = self._pop_locked()
                if event is None:
                    self._raise_error_locked()
                    return
            yield event

    async def collect(self) -> list[CompletionOutput]:
        """Consume the remaining events and return the outputs."""
        async for _ in self:
            pass
        return self.outputs()

    def collect_sync(self, timeout: float | None = None) -> list[CompletionOutput]:
        for _ in self.iter_sync(timeout):
            pass
        return self.outputs()

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()

    async def __aenter__(self) -> GenerationStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()

    # Producer side (scheduler thread) -----------------------------------------------------------

    def _deliver(
        self,
        choice: int,
        text: str = "",
        token: int | None = None,
        logprob: TokenLogprob | None = None,
        finish_reason: str | None = None,
    ) -> None:
        with self._lock:
            event = self._open.get(choice)
            if event is None:
                logprobs: list[TokenLogprob] | None = (
                    [] if self.params.logprobs is not None else None
                )
                event = StreamEvent(choice, "", [], logprobs)
                self._events.append(event)
                self._open[choice] = event
            event.text += text
            if token is not None:
                event.token_ids.append(token)
            if logprob is not None and event.logprobs is not None:
                event.logprobs.append(logprob)
            if finish_reason is not None:
                event.finish_reason = finish_reason
                del self._open[choice]
            self._notify_locked()

    def _close(self, outputs: list[CompletionOutput], error: BaseException | None = None) -> None:
        with self._lock:
            self._outputs = outputs
            self._error = error
            self._finished = True
            self._notify_locked()

    def _pop_locked(self) -> StreamEvent | None:
        if not self._events:
            return None
        event = self._events.popleft()
        if self._open.get(event.choice) is event:
            del self._open[event.choice]  # handed out: later tokens start a new event
        return event

    def _raise_error_locked(self) -> None:
        if self._error is not None:
            raise GenerationError(str(self._error)) from self._error

    def _notify_locked(self) -> None:
        self._ready.notify_all()
        if self._waiter is not None:
            loop, future = self._waiter
            self._waiter = None
            # A closed loop raises RuntimeError: its consumer is gone, nobody is listening.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@dataclasses.dataclass(eq=False)
class _Request:
    stream: GenerationStream
    prompt_index: int
    decoders: list[SequenceDecoder] = dataclasses.field(default_factory=list)
    state: torch.Tensor | None = None  # (n_layer, 1, nh, N, D) while prefilling
    prefilled: int = 0  # prompt tokens consumed so far
    live: int = 0  # choices not finished

    @property
    def prompt_ids(self) -> list[int]:
        return self.stream.prompt_ids

    @property
    def params(self) -> SamplingParams:
        return self.stream.params


@dataclasses.dataclass(eq=False)
class _Sequence:
    """A running choice; its state lives in pool slot `_Lane.running.index(self)`."""

    request: _Request
    decoder: SequenceDecoder
    last_token_at: float


class Scheduler:
    """Continuous batching of one model's requests on its lane threads (one by default)."""

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
    ) -> None:
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
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._waiting: deque[_Request] = deque()
        self._lanes = [_Lane(self, i) for i in range(min(lanes, max_batch))]
        self._started = False
        self._stopping = False
        # Statistics and admission, written under the lock.
        self._reserved = 0  # choices admitted and not finished, over all lanes
        self._started_at = time.monotonic()
        self._totals = {"requests": 0, "finished": 0, "aborted": 0, "prompt": 0, "generated": 0}
        self._token_window: deque[tuple[float, int]] = deque()
        self._ttft: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._itl: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._e2e: deque[float] = deque(maxlen=LATENCY_WINDOW)

    # Public API ---------------------------------------------------------------------------------

    @property
    def lanes(self) -> int:
        """Decode loops running side by side, each on its own thread and slots."""
        return len(self._lanes)

    @property
    def running(self) -> bool:
        return any(lane.thread is not None and lane.thread.is_alive() for lane in self._lanes)

    def start(self) -> Scheduler:
        with self._lock:
            if self._stopping:
                raise RuntimeError("a stopped scheduler cannot be restarted")
            if not self._started:
                self._started = True
                self._started_at = time.monotonic()
                for lane in self._lanes:
                    suffix = f"-lane{lane.index}" if lane.index else ""
                    lane.thread = threading.Thread(
                        target=lane.loop,
                        name=f"hatchery-scheduler-{self.lm.name}{suffix}",
                        daemon=True,
                    )
                    lane.thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """Abort everything pending (finish_reason "abort") and join the threads."""
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify_all()
            threads = [lane.thread for lane in self._lanes if lane.thread is not None]
        if not threads:
            self._abort_waiting()
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
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
        if params.n > self.max_batch:
            raise ValueError(f"n={params.n} exceeds the engine's max batch of {self.max_batch}")
        stream = GenerationStream(request_id or uuid.uuid4().hex, ids, params, self._wake)
        request = _Request(stream, prompt_index)
        with self._wakeup:
            if self._stopping:
                raise RuntimeError(f"the scheduler for {self.lm.name} is stopped")
            if len(self._waiting) >= self.max_waiting:
                raise EngineOverloaded(
                    f"{len(self._waiting)} requests are already waiting for {self.lm.name}",
                    retry_after=self._retry_after_locked(),
                )
            self._waiting.append(request)
            self._totals["requests"] += 1
            self._wakeup.notify_all()
        return stream

    def stats(self) -> SchedulerStats:
        with self._lock:
            now = time.monotonic()
            self._trim_window_locked(now)
            span = min(THROUGHPUT_WINDOW_S, max(now - self._started_at, 1e-3))
            ttft, itl = list(self._ttft), list(self._itl)
            counts = {key: sum(lane.counts[key] for lane in self._lanes) for key in _COUNTS}
            return SchedulerStats(
                model=self.lm.name,
                running=counts["running"],
                running_requests=counts["running_requests"],
                waiting=len(self._waiting),
                prefilling=counts["prefilling"],
                slots=counts["slots"],
                running_per_lane=[lane.counts["running"] for lane in self._lanes],
                max_batch=self.max_batch,
                total_requests=self._totals["requests"],
                finished_requests=self._totals["finished"],
                aborted_requests=self._totals["aborted"],
                prompt_tokens=self._totals["prompt"],
                tokens_generated=self._totals["generated"],
                tokens_per_s=sum(n for _, n in self._token_window) / span,
                ttft_mean_s=statistics.fmean(ttft) if ttft else None,
                ttft_p50_s=statistics.median(ttft) if ttft else None,
                inter_token_mean_s=statistics.fmean(itl) if itl else None,
                inter_token_p50_s=statistics.median(itl) if itl else None,
            )

    # Shared by the lanes -------------------------------------------------------------------------

    def _wake(self) -> None:
        with self._wakeup:
            self._wakeup.notify_all()

    def _has_work_locked(self, lane: _Lane) -> bool:
        """Whether `lane` should run a step now (called under the lock)."""
        if self._stopping or lane.prefilling or lane.running:
            return True
        if any(r.stream.abort_requested for r in self._waiting):
            return True  # the first lane awake drops it
        return bool(self._waiting) and self._fits_locked(lane, self._waiting[0].params.n)

    def _fits_locked(self, lane: _Lane, n: int) -> bool:
        """Whether `lane` may take a request of `n` choices: they fit in max_batch, and the
        lanes stay balanced (it ends with at most its share, or it is the least loaded)."""
        if self._reserved + n > self.max_batch:
            return False
        share = -(-(self._reserved + n) // len(self._lanes))  # ceil
        others = [other.reserved for other in self._lanes if other is not lane]
        return lane.reserved + n <= share or lane.reserved <= min(others, default=0)

    def _admit_locked(self, lane: _Lane) -> tuple[list[_Request], list[_Request]]:
        """(aborted waiting requests, requests admitted to `lane`), oldest first."""
        dropped = [r for r in self._waiting if r.stream.abort_requested]
        for request in dropped:
            self._waiting.remove(request)
        admitted = []
        while self._waiting and self._fits_locked(lane, self._waiting[0].params.n):
            request = self._waiting.popleft()
            request.live = request.params.n
            self._reserved += request.live
            lane.reserved += request.live
            admitted.append(request)
        return dropped, admitted

    def _retire_locked(self, lane: _Lane, choices: int) -> None:
        """`choices` of `lane`'s admitted choices finished: their slots are free for anyone."""
        if choices:
            self._reserved -= choices
            lane.reserved -= choices
            if self._waiting:
                self._wakeup.notify_all()

    def _end_unadmitted(self, request: _Request, reason: str) -> None:
        """End a request that never reached a lane (aborted while waiting, or at shutdown)."""
        outputs = _end_empty(request, reason)
        with self._lock:
            self._totals["aborted"] += 1
        self._observe("on_request_end", [reason] * len(outputs), len(request.prompt_ids), 0)
        request.stream._close(outputs)

    def _abort_waiting(self) -> None:
        with self._lock:
            waiting = list(self._waiting)
            self._waiting.clear()
        for request in waiting:
            self._end_unadmitted(request, FINISH_ABORT)

    def _observe(self, name: str, *args: float | int | list[str]) -> None:
        callback = getattr(self.observer, name, None)
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            logger.exception("engine observer %s failed", name)

    def _trim_window_locked(self, now: float) -> None:
        while self._token_window and self._token_window[0][0] < now - THROUGHPUT_WINDOW_S:
            self._token_window.popleft()

    def _retry_after_locked(self) -> float:
        """A rough wait: the recent mean request latency, scaled by the queue per slot."""
        if not self._e2e:
            return 1.0
        estimate = statistics.fmean(self._e2e) * len(self._waiting) / self.max_batch
        return min(max(estimate, 1.0), 60.0)


_COUNTS = ("running", "running_requests", "prefilling", "slots")


def _end_empty(request: _Request, reason: str) -> list[CompletionOutput]:
    """End every choice of a request that generated nothing: deliver `reason` to each, and
    return their (empty) outputs."""
    outputs = [
        CompletionOutput(
            index=choice,
            prompt_index=request.prompt_index,
            text="",
            token_ids=[],
            finish_reason=reason,
            prompt_tokens=len(request.prompt_ids),
            logprobs=[] if request.params.logprobs is not None else None,
        )
        for choice in range(request.params.n)
    ]
    for output in outputs:
        request.stream._deliver(output.index, finish_reason=reason)
    return outputs


class _Lane:
    """One continuous-batching loop: its own thread, slot pool, prefills and sequences.

    Lanes share the scheduler's waiting queue, limits and statistics. With several lanes the
    running sequences are spread over them and each lane steps on its own, so one lane's
    sampling and bookkeeping (Python, under the GIL) overlap another's decode step (the fused
    kernel, without the GIL), and neither waits for the other at the end of a step.
    """

    def __init__(self, scheduler: Scheduler, index: int) -> None:
        self.scheduler = scheduler
        self.index = index
        self.thread: threading.Thread | None = None
        self.reserved = 0  # this lane's admitted choices not finished (the scheduler's lock)
        self.counts = dict.fromkeys(_COUNTS, 0)  # published under the scheduler's lock
        # Owned by the lane's thread.
        self.prefilling: list[_Request] = []
        self.running: list[_Sequence] = []
        self.pool: torch.Tensor | None = None  # (n_layer, slots, nh, N, D) float32
        self.step_tokens = 0
        # Requests that ended this step; their streams close once the slots are freed and the
        # counts published, so a consumer that saw the end also sees the slots back in stats.
        self.closing: list[tuple[_Request, list[CompletionOutput], BaseException | None]] = []

    def loop(self) -> None:
        scheduler = self.scheduler
        with torch.inference_mode():
            while True:
                with scheduler._wakeup:
                    scheduler._wakeup.wait_for(lambda: scheduler._has_work_locked(self))
                    if scheduler._stopping:
                        break
                    dropped, admitted = scheduler._admit_locked(self)
                for request in dropped:
                    scheduler._end_unadmitted(request, FINISH_ABORT)
                try:
                    self._step(admitted)
                except Exception as exc:
                    logger.exception("generation step failed for %s", scheduler.lm.name)
                    self._end_all(FINISH_ERROR, exc)
            self.pool = None
            self._end_all(FINISH_ABORT)
            scheduler._abort_waiting()

    def _step(self, admitted: list[_Request]) -> None:
        vocab_size = self.scheduler.lm.config.vocab_size
        self.prefilling += admitted  # first, so that a failure below still ends them all
        for request in admitted:
            request.decoders = [
                SequenceDecoder(
                    request.prompt_ids,
                    request.params,
                    vocab_size=vocab_size,
                    choice=c,
                    prompt_index=request.prompt_index,
                )
                for c in range(request.params.n)
            ]
        self._drop_aborted()
        self._prefill()
        self._decode()
        generated, self.step_tokens = self.step_tokens, 0
        scheduler = self.scheduler
        with scheduler._lock:
            now = time.monotonic()
            scheduler._totals["generated"] += generated
            if generated:
                scheduler._token_window.append((now, generated))
        self._settle()

    def _settle(self) -> None:
        """Publish the counts, then close the streams of the requests that ended."""
        with self.scheduler._lock:
            self.counts.update(
                running=len(self.running),
                running_requests=len({id(s.request) for s in self.running}),
                prefilling=len(self.prefilling),
                slots=0 if self.pool is None else self.pool.size(1),
            )
        closing, self.closing = self.closing, []
        for request, outputs, error in closing:
            request.stream._close(outputs, error)

    def _drop_aborted(self) -> None:
        for request in [r for r in self.prefilling if r.stream.abort_requested]:
            self.prefilling.remove(request)
            self._end_request(request, FINISH_ABORT)
        gone = [i for i, s in enumerate(self.running) if s.request.stream.abort_requested]
        requests = {id(self.running[i].request): self.running[i].request for i in gone}
        self._release(gone)
        for request in requests.values():
            self._end_request(request, FINISH_ABORT)

    def _prefill(self) -> None:
        """Advance prefills by whole chunks, oldest first, up to `prefill_budget` tokens."""
        scheduler = self.scheduler
        model, spent = scheduler.lm.model, 0
        for request in list(self.prefilling):
            ids = request.prompt_ids
            logits = None
            while request.prefilled < len(ids):
                begin = request.prefilled
                end = min(begin + scheduler.prefill_chunk, len(ids))
                if spent + (end - begin) > scheduler.prefill_budget:
                    return
                if request.state is None:  # allocated on first use: 201 MB for bdh-official
                    # The first chunk starts at position 0 and writes the whole state.
                    request.state = model.new_state(1, zeroed=False)
                chunk = torch.tensor([ids[begin:end]], device=scheduler.lm.device)  # (1, C)
                logits = model.prefill_chunk(chunk, request.state, begin)  # (1, C, V)
                spent += end - begin
                request.prefilled = end
                scheduler._observe("on_prefill", end - begin)
                with scheduler._lock:
                    scheduler._totals["prompt"] += end - begin
            assert logits is not None
            self._start_decoding(request, logits[0, -1])
            self.prefilling.remove(request)

    def _start_decoding(self, request: _Request, logits: torch.Tensor) -> None:
        """Sample each choice's first token from the prompt's logits (V,); seat the others."""
        state = request.state
        assert state is not None
        scheduler = self.scheduler
        now = time.monotonic()
        request.stream.first_token_time = now
        ttft = now - request.stream.submitted_at
        with scheduler._lock:
            scheduler._ttft.append(ttft)
        scheduler._observe("on_first_token", ttft)
        logits = logits.float().cpu().expand(len(request.decoders), -1)  # (n, V)
        texts = accept_rows(request.decoders, logits)
        for decoder, text in zip(request.decoders, texts, strict=True):
            self._deliver(request, decoder, text)
            if not decoder.finished:
                slot = self._claim_slot()
                assert self.pool is not None
                self.pool[:, slot].copy_(state[:, 0])
                self.running.append(_Sequence(request, decoder, now))
        request.state = None

    def _decode(self) -> None:
        """One batched decode step over every running sequence of this lane."""
        batch = len(self.running)
        if batch == 0:
            return
        assert self.pool is not None
        scheduler = self.scheduler
        device = scheduler.lm.device
        tokens = torch.tensor([s.decoder.last_token for s in self.running], device=device)
        positions = torch.tensor([s.decoder.position for s in self.running], device=device)
        state = self.pool[:, :batch]  # (n_layer, B, nh, N, D), a view updated in place
        # A lane splits its step over the helper threads only while it decodes alone.
        alone = not any(lane.running for lane in scheduler._lanes if lane is not self)
        logits = scheduler.lm.model.decode_step(tokens, positions, state, split=alone)
        logits = logits.float().cpu()  # (B, V)
        now = time.monotonic()
        texts = accept_rows([s.decoder for s in self.running], logits)
        finished = []
        gaps = []
        for row, (sequence, text) in enumerate(zip(self.running, texts, strict=True)):
            gaps.append(now - sequence.last_token_at)
            sequence.last_token_at = now
            scheduler._observe("on_token", gaps[-1])
            self._deliver(sequence.request, sequence.decoder, text)
            if sequence.decoder.finished:
                finished.append(row)
        with scheduler._lock:
            scheduler._itl.extend(gaps)
        self._release(finished)

    def _deliver(self, request: _Request, decoder: SequenceDecoder, text: str) -> None:
        """Hand a choice's new token and text to its stream; close the request when done."""
        self.step_tokens += 1
        logprob = decoder.logprobs[-1] if decoder.logprobs else None
        request.stream._deliver(
            decoder.choice, text, decoder.last_token, logprob, decoder.finish_reason
        )
        if decoder.finished:
            request.live -= 1
            with self.scheduler._lock:
                self.scheduler._retire_locked(self, 1)
            if request.live == 0:
                self._close_request(request)

    # Slots --------------------------------------------------------------------------------------

    def _claim_slot(self) -> int:
        """The next slot, B; grows the pool geometrically up to max_batch (from INITIAL_SLOTS,
        or less where that would give the lanes more than max_batch slots to begin with)."""
        batch, max_batch = len(self.running), self.scheduler.max_batch
        if batch >= max_batch:
            raise RuntimeError("no free slot: admission let too many sequences in")
        if self.pool is None or batch == self.pool.size(1):
            scheduler = self.scheduler
            share = -(-max_batch // len(scheduler._lanes))  # ceil: the lanes start with max_batch
            capacity = self.pool.size(1) * 2 if self.pool is not None else min(INITIAL_SLOTS, share)
            # Every slot is written (copied into) before it is read: no need to zero it.
            pool = scheduler.lm.model.new_state(min(capacity, max_batch), zeroed=False)
            if self.pool is not None:
                pool[:, :batch].copy_(self.pool[:, :batch])
            self.pool = pool
            logger.debug("%s: state pool grown to %d slots", scheduler.lm.name, pool.size(1))
        return batch

    def _release(self, rows: list[int]) -> None:
        """Free running rows, moving the last running slot into each hole (highest first)."""
        for row in sorted(rows, reverse=True):
            last = len(self.running) - 1
            if row != last:
                assert self.pool is not None
                self.pool[:, row].copy_(self.pool[:, last])
                self.running[row] = self.running[last]
            self.running.pop()

    # Ends ---------------------------------------------------------------------------------------

    def _end_request(
        self, request: _Request, reason: str, error: BaseException | None = None
    ) -> None:
        """Finish every unfinished choice of an admitted request that leaves early."""
        request.state = None
        with self.scheduler._lock:
            self.scheduler._retire_locked(self, request.live)
        request.live = 0
        for decoder in request.decoders:
            if not decoder.finished:
                decoder.finish_reason = reason
                request.stream._deliver(decoder.choice, finish_reason=reason)
        if request.decoders:
            self._close_request(request, error=error)
        else:  # failed before its decoders were made
            self._close_request(request, _end_empty(request, reason), error)

    def _close_request(
        self,
        request: _Request,
        outputs: list[CompletionOutput] | None = None,
        error: BaseException | None = None,
    ) -> None:
        scheduler = self.scheduler
        if outputs is None:
            outputs = [d.output() for d in request.decoders]
        normal = all(o.finish_reason not in (FINISH_ABORT, FINISH_ERROR) for o in outputs)
        e2e = time.monotonic() - request.stream.submitted_at
        with scheduler._lock:
            scheduler._totals["finished" if normal else "aborted"] += 1
            if normal:
                scheduler._e2e.append(e2e)
        self.closing.append((request, outputs, error))
        completion = sum(o.completion_tokens for o in outputs)
        if normal:
            scheduler._observe("on_finish", e2e, len(request.prompt_ids), completion)
        reasons = [o.finish_reason or FINISH_ERROR for o in outputs]
        scheduler._observe("on_request_end", reasons, len(request.prompt_ids), completion)

    def _end_all(self, reason: str, error: BaseException | None = None) -> None:
        """End every admitted request of this lane (running or prefilling) with `reason`."""
        requests = {id(s.request): s.request for s in self.running}
        requests.update({id(r): r for r in self.prefilling})
        self.running.clear()
        self.prefilling.clear()
        for request in requests.values():
            self._end_request(request, reason, error)
        self._settle()
