"""The continuous-batching scheduler, with its real thread, on the bdh-nano model."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Iterator

import pytest
import torch

from core.engine import (
    EngineOverloaded,
    GenerationStream,
    LanguageModel,
    SamplingParams,
    Scheduler,
    StreamEvent,
    load_model,
)
from core.engine.state_write import StateWrite
from core.engine.stats import EngineObserver
from tests.support.poll import poll_until

from .conftest import SHIPPED_MODEL_DIR, nano_model

WAIT_S = 30.0


@pytest.fixture(scope="module")
def lm() -> LanguageModel:
    return LanguageModel("nano", nano_model(scale=5.0), {})


@pytest.fixture(params=[1, 2], ids=["1 lane", "2 lanes"])
def start(lm: LanguageModel, request: pytest.FixtureRequest) -> Iterator[Callable[..., Scheduler]]:
    """Start schedulers on `lm`, with one lane and with two (every test runs with both);
    every one is stopped (and its threads joined) afterwards."""
    started: list[Scheduler] = []

    def make(**options: object) -> Scheduler:
        options = {"max_batch": 8, "max_waiting": 16, "lanes": request.param, **options}
        scheduler = Scheduler(lm, **options).start()  # type: ignore[arg-type]
        started.append(scheduler)
        return scheduler

    yield make
    for scheduler in started:
        scheduler.stop(timeout=WAIT_S)
        assert not scheduler.running


def ids(text: str) -> list[int]:
    return list(text.encode())


def events_by_choice(events: list[StreamEvent]) -> dict[int, list[StreamEvent]]:
    by_choice: dict[int, list[StreamEvent]] = {}
    for event in events:
        by_choice.setdefault(event.choice, []).append(event)
    return by_choice


def wait_until(condition: Callable[[], bool], timeout: float = WAIT_S) -> None:
    poll_until(condition, timeout=timeout, interval=0.005)


def first_event(stream: GenerationStream) -> StreamEvent:
    return next(stream.iter_sync(timeout=WAIT_S))


# Exactness ----------------------------------------------------------------------------------------


def test_greedy_output_equals_language_model_complete(
    lm: LanguageModel, start: Callable[..., Scheduler]
) -> None:
    scheduler = start()
    params = SamplingParams(max_tokens=40, temperature=0.0)
    for prompt in ["First Citizen:", "x" * 600]:  # one chunk, and three of 256
        output = scheduler.submit(ids(prompt), params).collect_sync(WAIT_S)[0]
        expected = lm.complete([prompt], params)[0]
        assert output.token_ids == expected.token_ids
        assert output.text == expected.text
        assert output.finish_reason == "length"


def _eager_greedy(lm: LanguageModel, prompt: str, tokens: int, chunk: int = 256) -> list[int]:
    """Greedy tokens as the engine made them before the state write was deferred: every
    prefill chunk writes the state at once (`prefill_chunk`), then decode steps."""
    model, ids_ = lm.model, torch.tensor([ids(prompt)])
    state = model.new_state(1)
    for begin in range(0, ids_.size(1), chunk):
        logits = model.prefill_chunk(ids_[:, begin : begin + chunk], state, begin)[:, -1]
    out = [int(logits.argmax(-1))]
    for position in range(ids_.size(1), ids_.size(1) + tokens - 1):
        logits = model.decode_step(torch.tensor(out[-1:]), torch.tensor([position]), state)
        out.append(int(logits.argmax(-1)))
    return out


def test_the_shipped_models_greedy_output_is_unchanged() -> None:
    """The deferred state write changes when the state is written, not what is generated."""
    shipped = load_model("bdh-shakespeare", models_dir=SHIPPED_MODEL_DIR.parent)
    scheduler = Scheduler(shipped, max_batch=4, max_waiting=8).start()
    try:
        params = SamplingParams(max_tokens=48, temperature=0.0)
        for prompt in ["First Citizen:", "ROMEO:\n", "All the world's a stage. " * 30]:
            output = scheduler.submit(ids(prompt), params).collect_sync(WAIT_S)[0]
            assert output.token_ids == _eager_greedy(shipped, prompt, 48), prompt[:20]
    finally:
        scheduler.stop(timeout=WAIT_S)


def test_the_first_token_reaches_the_consumer_before_the_state_is_written(
    lm: LanguageModel, start: Callable[..., Scheduler], monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = ["Hi", "x" * 300]  # one chunk (written into the slot), and two
    params = SamplingParams(max_tokens=6, temperature=0.0, n=2)
    expected = [lm.complete([p], params) for p in prompts]
    received = threading.Event()
    held: list[bool] = []
    apply = StateWrite.apply

    def held_apply(write: StateWrite, state: torch.Tensor) -> None:
        held.append(received.wait(WAIT_S))  # until the consumer has the first token
        apply(write, state)

    monkeypatch.setattr(StateWrite, "apply", held_apply)
    scheduler = start()
    for prompt, outputs in zip(prompts, expected, strict=True):
        received.clear()
        stream = scheduler.submit(ids(prompt), params)
        events = stream.iter_sync(timeout=WAIT_S)
        first = next(events)
        assert len(first.token_ids) == 1  # nothing else comes while the write waits
        received.set()
        list(events)
        assert [o.token_ids for o in stream.outputs()] == [o.token_ids for o in outputs]
    assert held == [True, True]  # one write per request, shared by its two choices


def test_a_request_that_ends_at_its_first_token_writes_no_state(
    lm: LanguageModel, start: Callable[..., Scheduler], monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[int] = []
    apply = StateWrite.apply

    def counted(write: StateWrite, state: torch.Tensor) -> None:
        writes.append(1)
        apply(write, state)

    monkeypatch.setattr(StateWrite, "apply", counted)
    scheduler = start()
    output = scheduler.submit(ids("Hello"), SamplingParams(max_tokens=1)).collect_sync(WAIT_S)
    assert output[0].completion_tokens == 1 and writes == []
    scheduler.submit(ids("Hello"), SamplingParams(max_tokens=2)).collect_sync(WAIT_S)
    assert writes == [1]


def test_a_lane_reuses_one_prefill_buffer_for_every_prompt(lm: LanguageModel) -> None:
    scheduler = Scheduler(lm, max_batch=2, max_waiting=4, lanes=1).start()
    try:
        params = SamplingParams(max_tokens=3, temperature=0.0)
        for prompt in ["Hi", "x" * 600, "Hello", "y" * 300]:  # one chunk or several
            output = scheduler.submit(ids(prompt), params).collect_sync(WAIT_S)[0]
            assert output.token_ids == lm.complete([prompt], params)[0].token_ids
        wait_until(lambda: scheduler.stats().running == 0)
        stats = scheduler.stats()
        assert stats.state_memory_in_use == 0
        # Two slots and the one kept prefill buffer: within the budget's prefill state.
        assert stats.state_memory_allocated == 3 * stats.state_bytes_per_sequence
    finally:
        scheduler.stop(timeout=WAIT_S)
    assert scheduler.stats().state_memory_allocated == 0


def test_concurrent_seeded_requests_equal_each_alone(
    lm: LanguageModel, start: Callable[..., Scheduler]
) -> None:
    # Six prompts of different lengths (up to three prefill chunks), different sampling
    # settings and lengths, and fewer slots than requests: admissions, slot reuse and the
    # compaction on every finish all happen while the others decode.
    scheduler = start(max_batch=4, prefill_budget=256)
    prompts = ["a", "The quick brown fox", "z" * 300, "y y " * 150, "Hi", "q" * 700]
    params = [
        SamplingParams(max_tokens=15 + 9 * i, temperature=0.9, top_p=0.95, seed=10 + i)
        for i in range(6)
    ]
    params[2] = params[2].model_copy(update={"top_k": 20, "presence_penalty": 0.5})
    params[4] = params[4].model_copy(update={"min_p": 0.05, "repetition_penalty": 1.2})
    streams = [scheduler.submit(ids(p), s) for p, s in zip(prompts, params, strict=True)]
    for prompt, sampling, stream in zip(prompts, params, streams, strict=True):
        together = stream.collect_sync(WAIT_S)[0]
        alone = lm.complete([prompt], sampling)[0]
        assert together.token_ids == alone.token_ids, prompt[:20]
    stats = scheduler.stats()
    assert stats.slots == 4 * scheduler.lanes  # each lane allocates max_batch slots at once
    assert stats.finished_requests == 6
    assert stats.tokens_generated == sum(p.max_tokens for p in params)


def test_n_choices_prefill_once_and_each_choice_follows_its_seed(
    lm: LanguageModel, start: Callable[..., Scheduler]
) -> None:
    scheduler = start()
    params = SamplingParams(max_tokens=20, temperature=1.0, seed=5, n=3, logprobs=2)
    stream = scheduler.submit(ids("Hi"), params)
    events = list(stream.iter_sync(timeout=WAIT_S))
    outputs = stream.outputs()
    expected = lm.complete(["Hi"], params)
    assert [o.index for o in outputs] == [0, 1, 2]
    assert [o.token_ids for o in outputs] == [o.token_ids for o in expected]
    assert scheduler.stats().prompt_tokens == 2  # prefilled once for three choices
    for choice, choice_events in events_by_choice(events).items():
        assert "".join(e.text for e in choice_events) == outputs[choice].text
        assert [t for e in choice_events for t in e.token_ids] == outputs[choice].token_ids
        logprobs = [lp for e in choice_events for lp in e.logprobs or []]
        assert [lp.token for lp in logprobs] == outputs[choice].token_ids
        assert all(len(lp.top) == 2 for lp in logprobs)
        assert [e.finish_reason for e in choice_events][-1] == "length"
        assert all(e.finish_reason is None for e in choice_events[:-1])


def test_stop_strings_end_the_choice_and_never_appear(
    lm: LanguageModel, start: Callable[..., Scheduler]
) -> None:
    scheduler = start()
    free = SamplingParams(max_tokens=60, temperature=0.0)
    reference = lm.complete(["ROMEO:"], free)[0].text
    stop = reference[20:23]
    cut = reference.index(stop)
    params = free.model_copy(update={"stop": [stop]})
    stream = scheduler.submit(ids("ROMEO:"), params)
    streamed = "".join(e.text for e in stream.iter_sync(timeout=WAIT_S))
    output = stream.outputs()[0]
    assert output.finish_reason == "stop"
    assert output.text == streamed == reference[:cut]
    assert stop not in streamed


def test_same_seed_gives_the_same_text_alone_and_in_a_crowd(
    start: Callable[..., Scheduler],
) -> None:
    scheduler = start()
    params = SamplingParams(max_tokens=30, temperature=1.0, seed=42)
    alone = scheduler.submit(ids("Once upon"), params).collect_sync(WAIT_S)[0].text
    noise = [
        scheduler.submit(ids("noise " * k), SamplingParams(max_tokens=40, temperature=1.0))
        for k in range(1, 6)
    ]
    crowd = scheduler.submit(ids("Once upon"), params).collect_sync(WAIT_S)[0].text
    for stream in noise:
        stream.collect_sync(WAIT_S)
    assert crowd == alone


# Scheduling ---------------------------------------------------------------------------------------


class PrefillRecorder(EngineObserver):
    """Records, in scheduler order, prefill chunks and decoded tokens."""

    def __init__(self) -> None:
        self.log: list[str] = []

    def on_prefill(self, tokens: int) -> None:
        self.log.append("prefill")

    def on_token(self, inter_token_s: float) -> None:
        self.log.append("token")


def test_a_long_prefill_does_not_stall_running_streams(lm: LanguageModel) -> None:
    # Within one lane (with two, the long prompt would go to the idle one).
    recorder = PrefillRecorder()
    scheduler = Scheduler(
        lm, max_batch=8, max_waiting=16, prefill_chunk=64, prefill_budget=64, observer=recorder
    ).start()
    running = scheduler.submit(ids("Go"), SamplingParams(max_tokens=5000, temperature=0.0))
    events = running.iter_sync(timeout=WAIT_S)
    next(events)  # running, and its own prefill is over
    mark = len(recorder.log)
    long_prompt = ids("All the world's a stage. " * 120)  # 3000 bytes: 47 chunks of 64
    long = scheduler.submit(long_prompt, SamplingParams(max_tokens=3, temperature=0.0))
    assert long.collect_sync(WAIT_S)[0].finish_reason == "length"
    log = recorder.log[mark:]
    chunks = [i for i, what in enumerate(log) if what == "prefill"]
    assert len(chunks) == 47
    # Between any two consecutive chunks of the long prompt, the running stream got a token.
    for before, after in itertools.pairwise(chunks):
        assert "token" in log[before + 1 : after]
    running.abort()
    assert [e.finish_reason for e in events][-1] == "abort"
    assert 0 < running.outputs()[0].completion_tokens < 5000
    scheduler.stop(timeout=WAIT_S)


def test_abort_frees_the_slot_within_a_step(start: Callable[..., Scheduler]) -> None:
    scheduler = start()
    stream = scheduler.submit(ids("abc"), SamplingParams(max_tokens=100_000, n=2))
    first_event(stream)
    wait_until(lambda: scheduler.stats().running == 2)
    stream.abort()
    wait_until(lambda: scheduler.stats().running == 0, timeout=5.0)
    assert stream.collect_sync(WAIT_S)  # the stream ends
    outputs = stream.outputs()
    assert [o.finish_reason for o in outputs] == ["abort", "abort"]
    assert scheduler.stats().aborted_requests == 1
    # The freed slots serve the next request.
    params = SamplingParams(max_tokens=5, temperature=0.0)
    assert scheduler.submit(ids("abc"), params).collect_sync(WAIT_S)[0].completion_tokens == 5


def test_a_full_waiting_queue_raises_engine_overloaded(start: Callable[..., Scheduler]) -> None:
    scheduler = start(max_batch=1, max_waiting=1)
    slow = SamplingParams(max_tokens=100_000)
    running = scheduler.submit(ids("a"), slow)
    first_event(running)  # admitted: the queue is empty again
    waiting = scheduler.submit(ids("b"), slow)  # no free slot: it waits
    with pytest.raises(EngineOverloaded) as raised:
        scheduler.submit(ids("c"), slow)
    assert isinstance(raised.value, RuntimeError)
    assert raised.value.retry_after >= 1.0
    assert scheduler.stats().waiting == 1
    running.abort()
    first_event(waiting)  # the slot passes on
    waiting.abort()
    assert waiting.collect_sync(WAIT_S)[0].finish_reason == "abort"


def test_stop_aborts_every_pending_request_and_joins(lm: LanguageModel) -> None:
    scheduler = Scheduler(lm, max_batch=1, max_waiting=4).start()
    slow = SamplingParams(max_tokens=100_000)
    streams = [scheduler.submit(ids(p), slow) for p in ("a", "b", "c")]
    first_event(streams[0])
    scheduler.stop(timeout=WAIT_S)
    assert not scheduler.running
    assert not [t for t in threading.enumerate() if t.name == "hatchery-scheduler-nano"]
    for stream in streams:
        assert stream.finished
        assert stream.collect_sync(WAIT_S)[0].finish_reason == "abort"
    with pytest.raises(RuntimeError):
        scheduler.submit(ids("d"), slow)


def test_bad_requests_are_refused(start: Callable[..., Scheduler]) -> None:
    scheduler = start(max_batch=2)
    with pytest.raises(ValueError, match="empty"):
        scheduler.submit([], SamplingParams())
    with pytest.raises(ValueError, match="token ids"):
        scheduler.submit([65, 256], SamplingParams())
    with pytest.raises(ValueError, match="max batch"):
        scheduler.submit([65], SamplingParams(n=3))
    assert scheduler.stats().total_requests == 0


def test_stats_and_observer_report_latencies(start: Callable[..., Scheduler]) -> None:
    finishes: list[tuple[float, int, int]] = []
    firsts: list[float] = []

    class Observer:  # any object with some of the callbacks will do
        def on_first_token(self, ttft_s: float) -> None:
            firsts.append(ttft_s)

        def on_finish(self, e2e_s: float, prompt_tokens: int, completion_tokens: int) -> None:
            finishes.append((e2e_s, prompt_tokens, completion_tokens))

    scheduler = start(observer=Observer())
    params = SamplingParams(max_tokens=12, n=2)
    streams = [scheduler.submit(ids("abcd"), params) for _ in range(3)]
    for stream in streams:
        stream.collect_sync(WAIT_S)
        assert stream.ttft_s is not None and stream.ttft_s >= 0
    wait_until(lambda: len(finishes) == 3)
    assert len(firsts) == 3
    assert [f[1:] for f in finishes] == [(4, 24)] * 3
    stats = scheduler.stats()
    assert (stats.running, stats.waiting, stats.prefilling) == (0, 0, 0)
    assert stats.total_requests == stats.finished_requests == 3
    assert stats.tokens_generated == 72
    assert stats.tokens_per_s > 0
    assert stats.ttft_p50_s is not None and stats.inter_token_p50_s is not None
    assert set(stats.to_dict()) >= {"running", "waiting", "tokens_per_s", "ttft_mean_s"}


# Consumers ----------------------------------------------------------------------------------------


async def test_async_iteration_delivers_every_token_without_blocking(
    lm: LanguageModel, start: Callable[..., Scheduler]
) -> None:
    scheduler = start()
    params = SamplingParams(max_tokens=50, temperature=0.0)
    prompts = ["To be", "or not", "to be"]

    async def consume(prompt: str) -> tuple[str, list[int], str | None]:
        text, tokens, reason = "", [], None
        async with scheduler.submit(ids(prompt), params) as stream:
            async for event in stream:
                text += event.text
                tokens += event.token_ids
                reason = event.finish_reason or reason
        return text, tokens, reason

    ticks = 0

    async def ticker() -> None:  # the loop keeps turning while tokens arrive
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    ticking = asyncio.create_task(ticker())
    results = await asyncio.wait_for(asyncio.gather(*(consume(p) for p in prompts)), WAIT_S)
    ticking.cancel()
    for prompt, (text, tokens, reason) in zip(prompts, results, strict=True):
        expected = lm.complete([prompt], params)[0]
        assert (text, tokens, reason) == (expected.text, expected.token_ids, "length")
    assert ticks > 0


async def test_leaving_an_async_with_block_aborts_the_stream(
    start: Callable[..., Scheduler],
) -> None:
    scheduler = start()
    async with scheduler.submit(ids("abc"), SamplingParams(max_tokens=100_000)) as stream:
        async for _event in stream:
            break  # the client went away
    outputs = await asyncio.wait_for(stream.collect(), WAIT_S)
    assert outputs[0].finish_reason == "abort"
    await asyncio.wait_for(
        asyncio.to_thread(wait_until, lambda: scheduler.stats().running == 0), 10
    )


# Lanes -------------------------------------------------------------------------------------------


def test_lanes_share_the_load_and_one_batch_limit(lm: LanguageModel) -> None:
    scheduler = Scheduler(lm, max_batch=4, max_waiting=8, lanes=2).start()
    try:
        params = SamplingParams(max_tokens=4000, temperature=0.0)
        streams = [scheduler.submit(ids(f"lane {i}:"), params) for i in range(5)]
        wait_until(lambda: scheduler.stats().running == 4)
        stats = scheduler.stats()
        assert stats.running_per_lane == [2, 2]  # balanced
        assert stats.waiting == 1  # four choices in all, however many lanes
        streams[0].abort()
        refilled = (0, 4)  # nothing waits: the freed slot is taken
        wait_until(lambda: (scheduler.stats().waiting, scheduler.stats().running) == refilled)
        assert scheduler.stats().running_per_lane == [2, 2]
        for stream in streams:
            stream.abort()
        wait_until(lambda: scheduler.stats().running == 0)
        wide = scheduler.submit(ids("all"), SamplingParams(max_tokens=3, n=4, seed=1))
        outputs = wide.collect_sync(timeout=WAIT_S)  # n = max_batch fits in one lane
        assert [o.completion_tokens for o in outputs] == [3, 3, 3, 3]
    finally:
        scheduler.stop(timeout=WAIT_S)
    assert not scheduler.running
    assert not [t for t in threading.enumerate() if t.name.startswith("hatchery-scheduler-nano")]


def test_lanes_must_be_positive(lm: LanguageModel) -> None:
    with pytest.raises(ValueError, match="lanes"):
        Scheduler(lm, max_batch=4, max_waiting=8, lanes=0)
