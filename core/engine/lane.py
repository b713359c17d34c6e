"""The lane: one continuous-batching decode loop, on its own thread, with its own slots.

A scheduler (`core.engine.scheduler`) runs one lane or several side by side; they share its
waiting queue and limits, and each has its own `SlotPool`, prefills and running sequences.
Each step a lane

1. takes the requests admitted to it (aborted waiting ones were dropped by the scheduler);
2. prefills admitted prompts chunk by chunk, at most `prefill_budget` tokens per step, so
   running streams keep flowing while a long prompt is read; a prompt's last chunk gives
   its logits before writing the state (`BDH.prefill_last`), so the first token is sampled
   and delivered first and the state written after, straight into the sequence's slot
   (the second token's latency carries that write);
3. runs one batched `decode_step` over all its running sequences, whose states are the view
   `SlotPool.states()` of a pool kept compacted (no gather or scatter copies);
4. samples each row with its own `SequenceDecoder` and delivers the text to its stream;
5. frees finished sequences by moving the last slot's state into the hole (one state copy
   per finished sequence, never one per token).

Why several lanes: on the CPU the fused decode step (`core.engine.kernels`) runs without the
GIL, while sampling, delivery and bookkeeping are Python under it. With one lane per decode
thread, one lane samples and delivers while another decodes, and no lane waits for the others
at the end of its step (there is no per-step barrier). A lane that decodes alone instead
splits its step over the kernel's helper threads (`kernels.run_split`) and samples alone. On
a GPU one lane is used: a second would gain nothing.

Prefill chunks start at multiples of `prefill_chunk` whatever else is running, and every
sequence draws from its own generator, so a seeded request gives the same tokens alone or in
any batch, on any lane, and the same tokens as `LanguageModel.complete` with the same chunk
size.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Protocol

import torch

from .language_model import LanguageModel
from .model import StateWrite
from .sampling import SamplingParams
from .sequence import FINISH_ABORT, CompletionOutput, SequenceDecoder, accept_rows
from .slots import SlotPool
from .stats import LaneLoad, StatsRecorder
from .stream import GenerationStream

logger = logging.getLogger(__name__)

FINISH_ERROR = "error"


@dataclasses.dataclass(eq=False)
class Request:
    """One submitted request, from the waiting queue to its end."""

    stream: GenerationStream
    prompt_index: int
    decoders: list[SequenceDecoder] = dataclasses.field(default_factory=list)
    state: torch.Tensor | None = None  # (n_layer, 1, nh, N, D) while prefilling
    prefilled: int = 0  # prompt tokens consumed so far
    live: int = 0  # choices admitted and not finished

    @property
    def prompt_ids(self) -> list[int]:
        return self.stream.prompt_ids

    @property
    def params(self) -> SamplingParams:
        return self.stream.params

    def end_empty(self, reason: str) -> list[CompletionOutput]:
        """End every choice of a request that generated nothing (still waiting, or failed
        before its decoders were made): deliver `reason` to each; return the empty outputs."""
        outputs = [
            CompletionOutput(
                index=choice,
                prompt_index=self.prompt_index,
                text="",
                token_ids=[],
                finish_reason=reason,
                prompt_tokens=len(self.prompt_ids),
                logprobs=[] if self.params.logprobs is not None else None,
            )
            for choice in range(self.params.n)
        ]
        for output in outputs:
            self.stream.deliver(output.index, finish_reason=reason)
        return outputs


@dataclasses.dataclass(eq=False)
class RunningSequence:
    """A choice being decoded; its state is its lane's slot at its row."""

    request: Request
    decoder: SequenceDecoder
    last_token_at: float


class Admission(Protocol):
    """What a lane asks of its scheduler (`core.engine.scheduler.Scheduler`)."""

    def next_admitted(self, lane: Lane) -> list[Request] | None:
        """Block until `lane` has work; the requests admitted to it (maybe none), or None
        when the scheduler stops."""
        ...

    def retire(self, lane: Lane, choices: int) -> None:
        """`choices` of `lane`'s admitted choices finished: their room is free for anyone."""
        ...

    def decoding_elsewhere(self, lane: Lane) -> bool:
        """Whether another lane has running sequences."""
        ...

    def abort_waiting(self) -> None:
        """End every request still waiting (the lane is stopping)."""
        ...


class Lane:
    """One decode loop: its thread, slot pool, prefills and running sequences."""

    def __init__(
        self,
        index: int,
        lm: LanguageModel,
        *,
        admission: Admission,
        stats: StatsRecorder,
        slots: int,
        prefill_chunk: int,
        prefill_budget: int,
        decode_threads: int,
    ) -> None:
        self.index = index
        self.lm = lm
        self.prefill_chunk = prefill_chunk
        self.prefill_budget = prefill_budget
        self.decode_threads = decode_threads  # a step's split while it decodes alone
        self.load = LaneLoad()  # replaced whole after each step, so readers need no lock
        self._admission = admission
        self._stats = stats
        self._thread: threading.Thread | None = None
        # Owned by the lane's thread.
        self._prefilling: list[Request] = []
        # All its slots at once: growing would briefly hold the old pool and the new one,
        # more than the state budget allows (`core.engine.state_memory`).
        self._pool: SlotPool[RunningSequence] = SlotPool(
            lm.model.new_state, max_slots=slots, initial_slots=slots, name=lm.name
        )
        # The budgeted prefill state, kept from prompt to prompt (already paged in): a long
        # prompt's state until it is seated, or a one-chunk prompt's kept queries until
        # its state is written. One user at a time (see `_buffer`).
        self._prefill_buffer: torch.Tensor | None = None  # (n_layer, 1, nh, N, D)
        self._buffer_user: Request | None = None
        self._step_tokens = 0
        # Requests that ended this step; their streams end once the slots are freed and the
        # load published, so a consumer that saw the end also sees the slots back in stats.
        self._closing: list[tuple[Request, list[CompletionOutput], BaseException | None]] = []

    @property
    def busy(self) -> bool:
        """Whether the lane has prefills or running sequences (it steps without new work)."""
        return bool(self._prefilling or self._pool.items)

    @property
    def decoding(self) -> bool:
        return bool(self._pool.items)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, name: str) -> None:
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def join(self, timeout: float | None) -> bool:
        """Wait for the thread to end; whether it did (True as well if it never started)."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        with torch.inference_mode():
            while (admitted := self._admission.next_admitted(self)) is not None:
                try:
                    self._step(admitted)
                except Exception as exc:
                    logger.exception("generation step failed for %s", self.lm.name)
                    self._end_all(FINISH_ERROR, exc)
            self._end_all(FINISH_ABORT, free=True)
            self._admission.abort_waiting()

    def _step(self, admitted: list[Request]) -> None:
        vocab_size = self.lm.config.vocab_size
        self._prefilling += admitted  # first, so that a failure below still ends them all
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
        generated, self._step_tokens = self._step_tokens, 0
        self._stats.step_generated(generated)
        self._settle()

    def _settle(self) -> None:
        """Publish the load, then end the streams of the requests that ended."""
        running = self._pool.items
        self.load = LaneLoad(
            running=len(running),
            running_requests=len({id(s.request) for s in running}),
            prefilling=len(self._prefilling),
            prefill_states=sum(1 for r in self._prefilling if r.state is not None),
            prefill_allocated=(self._prefill_buffer is not None)
            + sum(
                1
                for r in self._prefilling
                if r.state is not None and r.state is not self._prefill_buffer
            ),
            slots=self._pool.capacity,
        )
        closing, self._closing = self._closing, []
        for request, outputs, error in closing:
            request.stream.end(outputs, error)

    def _drop_aborted(self) -> None:
        for request in [r for r in self._prefilling if r.stream.abort_requested]:
            self._prefilling.remove(request)
            self._end_request(request, FINISH_ABORT)
        running = self._pool.items
        gone = [i for i, s in enumerate(running) if s.request.stream.abort_requested]
        requests = {id(running[i].request): running[i].request for i in gone}
        self._pool.release(gone)
        for request in requests.values():
            self._end_request(request, FINISH_ABORT)

    def _prefill(self) -> None:
        """Advance prefills by whole chunks, oldest first, up to `prefill_budget` tokens."""
        model, spent = self.lm.model, 0
        for request in list(self._prefilling):
            ids = request.prompt_ids
            while request.prefilled < len(ids):
                begin = request.prefilled
                end = min(begin + self.prefill_chunk, len(ids))
                if spent + (end - begin) > self.prefill_budget:
                    return
                chunk = torch.tensor([ids[begin:end]], device=self.lm.device)  # (1, C)
                spent += end - begin
                if end < len(ids):  # not the last chunk: it writes the state at once
                    if request.state is None:  # 201 MB for bdh-official
                        # The first chunk starts at position 0 and writes the whole state.
                        request.state = self._buffer(request)
                    model.absorb_chunk(chunk, request.state, begin)
                    request.prefilled = end
                    self._stats.prompt_read(end - begin)
                    continue
                # The last chunk: logits first, its state write after the first token; the
                # write's queries are kept in the prefill buffer. A longer prompt's state
                # moves out of the buffer first, into the slot its sequence will take.
                reserved = None
                if request.state is not None:
                    reserved = self._pool.reserve()
                    reserved.copy_(request.state)
                    request.state = None
                scratch = self._buffer(request)
                logits, write = model.prefill_last(chunk, reserved, begin, scratch=scratch)
                request.prefilled = end
                self._stats.prompt_read(end - begin)
                self._start_decoding(request, logits[0], write, reserved)
            self._prefilling.remove(request)

    def _start_decoding(
        self,
        request: Request,
        logits: torch.Tensor,
        write: StateWrite,
        reserved: torch.Tensor | None,
    ) -> None:
        """Sample each choice's first token from the prompt's logits (V,) and deliver it
        (that is the time to first token); then write the prompt's last chunk into the state
        of the choices that go on, straight into the first one's slot (`reserved` already
        holds the earlier chunks' state, if any), and seat them."""
        now = time.monotonic()
        request.stream.first_token_time = now
        self._stats.first_token(now - request.stream.submitted_at)
        logits = logits.float().cpu().expand(len(request.decoders), -1)  # (n, V)
        texts = accept_rows(request.decoders, logits)
        for decoder, text in zip(request.decoders, texts, strict=True):
            self._deliver(request, decoder, text)

        def fill(slot: torch.Tensor) -> None:  # `reserved` is this slot: nothing else sat
            if reserved is not None and slot.data_ptr() != reserved.data_ptr():
                slot.copy_(reserved)
            write.apply(slot)  # without `reserved`, position 0: it writes all of the state

        going_on = [d for d in request.decoders if not d.finished]
        try:
            self._pool.seat_filled([RunningSequence(request, d, now) for d in going_on], fill)
        finally:
            self._release_buffer(request)

    def _buffer(self, request: Request) -> torch.Tensor:
        """The lane's prefill buffer for `request` (made on first use, kept after): a long
        prompt's state until its last chunk, then the queries of that chunk's deferred
        write. A fresh state should another request still hold it (the lane reads one
        prompt at a time across steps, so it does not)."""
        if self._buffer_user not in (None, request):
            return self.lm.model.new_state(1, zeroed=False)
        if self._prefill_buffer is None:
            self._prefill_buffer = self.lm.model.new_state(1, zeroed=False)
        self._buffer_user = request
        return self._prefill_buffer

    def _release_buffer(self, request: Request) -> None:
        if self._buffer_user is request:
            self._buffer_user = None

    def _decode(self) -> None:
        """One batched decode step over every running sequence of this lane."""
        running = self._pool.items
        if not running:
            return
        device = self.lm.device
        tokens = torch.tensor([s.decoder.last_token for s in running], device=device)  # (B,)
        positions = torch.tensor([s.decoder.position for s in running], device=device)  # (B,)
        state = self._pool.states()  # (n_layer, B, nh, N, D), a view updated in place
        alone = not self._admission.decoding_elsewhere(self)  # see the module docstring
        threads = self.decode_threads if alone else 1
        logits = self.lm.model.decode_step(tokens, positions, state, threads=threads)
        logits = logits.float().cpu()  # (B, V)
        now = time.monotonic()
        texts = accept_rows([s.decoder for s in running], logits)
        finished = []
        gaps = []
        for row, (sequence, text) in enumerate(zip(running, texts, strict=True)):
            gaps.append(now - sequence.last_token_at)
            sequence.last_token_at = now
            self._deliver(sequence.request, sequence.decoder, text)
            if sequence.decoder.finished:
                finished.append(row)
        self._stats.token_gaps(gaps)
        self._pool.release(finished)

    def _deliver(self, request: Request, decoder: SequenceDecoder, text: str) -> None:
        """Hand a choice's new token and text to its stream; close the request when done."""
        self._step_tokens += 1
        logprob = decoder.logprobs[-1] if decoder.logprobs else None
        request.stream.deliver(
            decoder.choice, text, decoder.last_token, logprob, decoder.finish_reason
        )
        if decoder.finished:
            request.live -= 1
            self._admission.retire(self, 1)
            if request.live == 0:
                self._close_request(request)

    # Ends ---------------------------------------------------------------------------------------

    def _end_request(
        self, request: Request, reason: str, error: BaseException | None = None
    ) -> None:
        """Finish every unfinished choice of an admitted request that leaves early."""
        request.state = None
        self._release_buffer(request)
        self._admission.retire(self, request.live)
        request.live = 0
        for decoder in request.decoders:
            if not decoder.finished:
                decoder.finish_reason = reason
                request.stream.deliver(decoder.choice, finish_reason=reason)
        if request.decoders:
            self._close_request(request, error=error)
        else:  # failed before its decoders were made
            self._close_request(request, request.end_empty(reason), error)

    def _close_request(
        self,
        request: Request,
        outputs: list[CompletionOutput] | None = None,
        error: BaseException | None = None,
    ) -> None:
        if outputs is None:
            outputs = [d.output() for d in request.decoders]
        normal = all(o.finish_reason not in (FINISH_ABORT, FINISH_ERROR) for o in outputs)
        self._closing.append((request, outputs, error))
        self._stats.request_ended(
            normal=normal,
            e2e_s=time.monotonic() - request.stream.submitted_at,
            finish_reasons=[o.finish_reason or FINISH_ERROR for o in outputs],
            prompt_tokens=len(request.prompt_ids),
            completion_tokens=sum(o.completion_tokens for o in outputs),
        )

    def _end_all(
        self, reason: str, error: BaseException | None = None, *, free: bool = False
    ) -> None:
        """End every admitted request of this lane (running or prefilling) with `reason`;
        `free` also drops the slots' memory (the lane is stopping)."""
        requests = {id(s.request): s.request for s in self._pool.items}
        requests.update({id(r): r for r in self._prefilling})
        self._pool.clear(free=free)
        if free:
            self._prefill_buffer = None
        self._prefilling.clear()
        for request in requests.values():
            self._end_request(request, reason, error)
        self._settle()
