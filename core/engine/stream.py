"""The bridge from a lane thread to a request's consumer, on an event loop or in a thread.

    stream = scheduler.submit(prompt_ids, params)
    async for event in stream:              # or, in a worker thread: stream.iter_sync()
        print(event.choice, event.text, event.finish_reason)
    outputs = stream.outputs()

The lane (the producer, `core.engine.lane`) calls `deliver` and `end`; events of one choice
that the consumer has not taken yet merge into one, so a slow consumer gets fewer, larger
events rather than an ever longer queue. An async consumer waits on a future its loop resolves
(`call_soon_threadsafe`), a thread waits on a condition: neither ever polls.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Self

from .sampling import SamplingParams
from .sequence import CompletionOutput, TokenLogprob


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


class AbortsOnExit(abc.ABC):
    """`with` and `async with` end the work in flight when the block is left early: `__exit__`
    calls `abort()`, a no-op for work already finished."""

    @abc.abstractmethod
    def abort(self) -> None:
        """End the work in flight (from any thread); a no-op once it has finished."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()


class GenerationStream(AbortsOnExit):
    """The output of one request, fed by a lane thread, read by one consumer.

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

    # Producer side (a lane thread) ------------------------------------------------------------

    def deliver(
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

    def end(self, outputs: list[CompletionOutput], error: BaseException | None = None) -> None:
        """The request is over: `outputs` one per choice, `error` what made it fail, if anything."""
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
