"""Memory-aware admission: a scheduler's slots come from `generation.max_state_memory`, and
requests beyond them wait in the queue (the server-level test is in tests/generator_api)."""

from __future__ import annotations

import time

import pytest

from core.config import load_settings
from core.engine import LanguageModel, SamplingParams, Scheduler
from core.engine.state_memory import StateMemoryTooSmall, plan_slots, state_bytes
from core.errors import ConfigError

from .conftest import nano_model

WAIT_S = 30.0


@pytest.fixture(scope="module")
def lm() -> LanguageModel:
    return LanguageModel("nano", nano_model(scale=5.0), {})


@pytest.mark.parametrize(
    ("budget", "max_batch", "lanes", "planned"),
    [
        (35, 8, 1, (2, 1)),  # 3 states: 2 slots + the prefill state
        (180, 8, 2, (8, 2)),  # 18 states: each lane holds every sequence and a prefill state
        (100, 8, 2, (8, 1)),  # 10 states: two lanes would hold 4 sequences, one lane 8
        (10**6, 5, 2, (5, 2)),  # max_batch caps a large budget
        (30, 8, 2, (2, 1)),  # two lanes would cost a sequence: one lane keeps two slots
        (20, 8, 1, (1, 1)),  # the least that serves: one slot, one prefill state
    ],
)
def test_the_budget_pays_for_each_lanes_slots_and_prefill_state(
    budget: int, max_batch: int, lanes: int, planned: tuple[int, int]
) -> None:
    plan = plan_slots(
        state_bytes=10, max_state_memory=budget, max_batch=max_batch, lanes=lanes, model="m"
    )
    assert (plan.sequences, plan.lanes) == planned
    assert (plan.sequences + 1) * plan.lanes * plan.state_bytes <= budget


def test_a_budget_below_one_slot_and_its_prefill_is_refused() -> None:
    with pytest.raises(StateMemoryTooSmall) as raised:
        plan_slots(state_bytes=10, max_state_memory=19, max_batch=8, lanes=1, model="m")
    assert raised.value.status_code == 503
    assert raised.value.code == "state_memory_too_small"
    assert "'m'" in str(raised.value) and "20 bytes" in str(raised.value)


def test_the_setting_takes_bytes_or_sizes() -> None:
    assert load_settings().generation.max_state_memory is None  # the default: see state_memory
    for given, expected in [(4096, 4096), ("3MiB", 3 * 2**20), ("2GB", 2 * 10**9)]:
        settings = load_settings(**{"generation.max_state_memory": given})
        assert settings.generation.max_state_memory == expected
    for bad in ["lots", "0", -1, "3 MiBs"]:
        with pytest.raises(ConfigError, match="max_state_memory"):
            load_settings(**{"generation.max_state_memory": bad})


def wait_for(condition: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_requests_beyond_the_budget_wait_and_run_when_a_slot_frees(lm: LanguageModel) -> None:
    per = state_bytes(lm.config)
    # Room for two sequences and a prefill state; two lanes asked for, one affordable.
    scheduler = Scheduler(lm, max_batch=8, max_waiting=4, lanes=2, max_state_memory=3 * per)
    scheduler.start()
    try:
        assert scheduler.lanes == 1
        endless = SamplingParams(max_tokens=1_000_000, temperature=1.0, seed=1)
        first, second = (scheduler.submit(list(b"keep going"), endless) for _ in range(2))
        third_params = SamplingParams(max_tokens=12, temperature=0.8, seed=7)
        third = scheduler.submit(list(b"The third"), third_params)
        wait_for(lambda: scheduler.stats().running == 2, "two running sequences")
        stats = scheduler.stats()
        assert (stats.running, stats.waiting, stats.free_slots) == (2, 1, 0)
        assert stats.max_sequences == 2 and stats.state_bytes_per_sequence == per
        assert stats.max_state_memory == 3 * per
        assert stats.state_memory_in_use == 2 * per
        assert not third.finished
        first.abort()  # its slot goes to the waiting request
        together = third.collect_sync(WAIT_S)[0]
        assert together.finish_reason == "length"
        assert together.token_ids == lm.complete(["The third"], third_params)[0].token_ids
        assert first.collect_sync(WAIT_S)[0].finish_reason == "abort"
        second.abort()
        second.collect_sync(WAIT_S)
        wait_for(lambda: scheduler.stats().free_slots == 2, "the slots to be free")
        assert scheduler.stats().state_memory_in_use == 0
    finally:
        scheduler.stop(timeout=WAIT_S)


def test_more_choices_than_a_lane_holds_are_refused(lm: LanguageModel) -> None:
    per = state_bytes(lm.config)
    scheduler = Scheduler(lm, max_batch=8, max_waiting=4, lanes=1, max_state_memory=3 * per)
    with pytest.raises(ValueError, match="n=3"):
        scheduler.submit(list(b"x"), SamplingParams(max_tokens=2, n=3))
