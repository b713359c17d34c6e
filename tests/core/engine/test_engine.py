"""The engine: lazily created, per-model schedulers over a real registry of bdh-nano models."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from core.config import Settings
from core.engine import (
    Engine,
    GenerationStream,
    ModelNotFoundError,
    ModelRegistry,
    SamplingParams,
    Scheduler,
    StreamEvent,
    build_engine,
    kernels,
)
from core.engine.checkpoint import save_checkpoint
from core.engine.engine import decode_lanes
from core.engine.registry import InvalidModelNameError

from .conftest import nano_model

WAIT_S = 30.0
GREEDY = SamplingParams(max_tokens=12, temperature=0.0)


def scheduler_threads() -> list[threading.Thread]:
    """This module's scheduler threads (servers of other test modules may still be running)."""
    names = {"hatchery-scheduler-nano-a", "hatchery-scheduler-nano-b"}
    return [t for t in threading.enumerate() if t.name.split("-lane")[0] in names]


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    save_checkpoint(nano_model(seed=1, scale=5.0), tmp_path / "nano-a", {"description": "a"})
    save_checkpoint(nano_model(seed=2, scale=5.0), tmp_path / "nano-b", {"description": "b"})
    return tmp_path


@pytest.fixture
def engine(models_dir: Path) -> Iterator[Engine]:
    engine = Engine(
        ModelRegistry(models_dir, device="cpu"), max_batch=4, max_waiting=8, preload=["nano-a"]
    )
    yield engine
    engine.shutdown(timeout=WAIT_S)
    assert not scheduler_threads()


def test_preload_makes_the_engine_ready(engine: Engine) -> None:
    assert not engine.is_ready()
    assert engine.loaded_models() == []
    engine.preload()
    assert engine.is_ready()
    assert engine.loaded_models() == ["nano-a"]
    lanes = engine.scheduler("nano-a").lanes
    assert lanes == decode_lanes(engine.registry.load("nano-a"), engine.decode_threads)
    names = ["hatchery-scheduler-nano-a"] + [
        f"hatchery-scheduler-nano-a-lane{i}" for i in range(1, lanes)
    ]
    assert sorted(t.name for t in scheduler_threads()) == names


def test_one_scheduler_per_model_even_under_concurrent_first_use(engine: Engine) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        schedulers = list(pool.map(engine.scheduler, ["nano-a", "nano-b"] * 8))
    assert len({id(s) for s in schedulers[0::2]}) == 1
    assert len({id(s) for s in schedulers[1::2]}) == 1
    assert schedulers[0] is not schedulers[1]
    assert isinstance(schedulers[0], Scheduler)
    assert schedulers[0].lm is engine.registry.load("nano-a")  # the registry's one copy
    assert len(scheduler_threads()) == schedulers[0].lanes + schedulers[1].lanes


def test_each_model_generates_its_own_text(engine: Engine) -> None:
    a = engine.submit("nano-a", list(b"Hello"), GREEDY)
    b = engine.submit("nano-b", list(b"Hello"), GREEDY)
    assert isinstance(a, GenerationStream)
    text_a = a.collect_sync(WAIT_S)[0].text
    text_b = b.collect_sync(WAIT_S)[0].text
    assert text_a == engine.registry.load("nano-a").complete(["Hello"], GREEDY)[0].text
    assert text_b == engine.registry.load("nano-b").complete(["Hello"], GREEDY)[0].text
    assert text_a != text_b


def test_stats_report_each_model_and_the_totals(engine: Engine) -> None:
    engine.preload()
    for name in ("nano-a", "nano-b"):
        engine.submit(name, list(b"abc"), GREEDY).collect_sync(WAIT_S)
    stats = engine.stats()
    assert stats["ready"] is True
    assert sorted(stats["models"]) == ["nano-a", "nano-b"]
    assert stats["models"]["nano-a"]["tokens_generated"] == 12
    assert stats["totals"]["tokens_generated"] == 24
    assert stats["totals"]["total_requests"] == 2
    assert stats["totals"]["running"] == stats["totals"]["waiting"] == 0


def test_unknown_and_invalid_models_are_refused(engine: Engine) -> None:
    with pytest.raises(ModelNotFoundError):
        engine.scheduler("nano-z")
    with pytest.raises(InvalidModelNameError):
        engine.scheduler("../nano-a")
    assert engine.loaded_models() == []


def test_forget_stops_the_scheduler_and_the_next_use_starts_a_new_one(engine: Engine) -> None:
    first = engine.scheduler("nano-b")
    pending = first.submit(list(b"abc"), SamplingParams(max_tokens=100_000))
    engine.forget("nano-b")
    assert not first.running
    assert pending.collect_sync(WAIT_S)[0].finish_reason == "abort"
    assert engine.loaded_models() == []
    second = engine.scheduler("nano-b")
    assert second is not first and second.running
    engine.forget("never-loaded")  # nothing to do


def test_shutdown_aborts_pending_work_and_leaves_no_thread(engine: Engine) -> None:
    engine.preload()
    pending = engine.submit("nano-a", list(b"abc"), SamplingParams(max_tokens=100_000))
    events: list[StreamEvent] = []
    for event in pending.iter_sync(timeout=WAIT_S):
        events.append(event)
        break
    engine.shutdown(timeout=WAIT_S)
    assert not scheduler_threads()
    assert pending.collect_sync(WAIT_S)[0].finish_reason == "abort"
    assert not engine.is_ready()
    with pytest.raises(RuntimeError, match="shut down"):
        engine.scheduler("nano-a")


def test_build_engine_follows_the_settings(models_dir: Path) -> None:
    settings = Settings(
        model={
            "models_dir": str(models_dir),
            "device": "cpu",
            "preload": ["nano-b"],
            "decode_threads": 2,
        },
        generation={"max_batch": 3, "max_waiting": 5},
    )
    engine = build_engine(settings)
    try:
        assert (engine.max_batch, engine.max_waiting, engine.preload_names) == (3, 5, ["nano-b"])
        assert engine.decode_threads == 2  # this engine's, not a process-wide setting
        engine.preload()
        assert engine.is_ready()
        lm = engine.registry.load("nano-b")
        assert engine.scheduler("nano-b").lanes == decode_lanes(lm, 2)
        assert engine.scheduler("nano-b").max_batch == 3
    finally:
        engine.shutdown()
    assert not scheduler_threads()


def test_decode_lanes_follow_the_kernel_and_its_threads(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    lm = engine.registry.load("nano-a")
    monkeypatch.setenv(kernels.KERNEL_ENV, "fused")
    assert decode_lanes(lm, 3) == 3  # one lane per decode thread: steps without the GIL
    monkeypatch.setenv(kernels.KERNEL_ENV, "torch")
    assert decode_lanes(lm, 3) == 1  # PyTorch operators hold the GIL between them
