"""The serving engine: one continuous-batching `Scheduler` per loaded model.

    engine = build_engine(settings)          # nothing loaded yet
    engine.preload()                         # blocking: load settings.model.preload
    stream = engine.submit("bdh-shakespeare", prompt_ids, params)
    ...
    engine.shutdown()

Schedulers are created on first use, once per model even when many threads ask at the same
time; loading a model happens outside the engine-wide lock, so a slow load of one model does
not hold up requests for another. One engine is built per process (in the app's lifespan)
and shared by every component, so each model sits in memory once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from . import kernels
from .language_model import PREFILL_CHUNK, LanguageModel
from .registry import ModelRegistry
from .sampling import SamplingParams
from .scheduler import Scheduler
from .state_memory import DEFAULT_FRACTION, default_state_memory
from .stats import EngineObserver
from .stream import GenerationStream

if TYPE_CHECKING:
    from core.config import Settings

logger = logging.getLogger(__name__)


@runtime_checkable
class PerModelObserver(Protocol):
    """An observer that hands each model's scheduler its own (the metrics' per-model labels)."""

    def for_model(self, model: str) -> EngineObserver: ...


class Engine:
    """Thread-safe owner of the per-model schedulers."""

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        max_batch: int,
        max_waiting: int,
        preload: Sequence[str] = (),
        observer: EngineObserver | None = None,
        prefill_chunk: int = PREFILL_CHUNK,
        prefill_budget: int = 2 * PREFILL_CHUNK,
        decode_threads: int | None = None,
        max_state_memory: int | None = None,
    ) -> None:
        if decode_threads is not None and decode_threads < 1:
            raise ValueError("decode_threads must be positive")
        self.registry = registry
        # Per model's scheduler; None: what max_batch slots need (see core.engine.state_memory).
        self.max_state_memory = max_state_memory
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.preload_names = list(preload)
        self.observer = observer
        self.prefill_chunk = prefill_chunk
        self.prefill_budget = prefill_budget
        self.decode_threads = decode_threads or kernels.threads()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}  # per model: one load at a time
        self._schedulers: dict[str, Scheduler] = {}
        self._closed = False

    def scheduler(self, model_name: str) -> Scheduler:
        """The model's running scheduler, loading the model on first use.

        Raises the registry's errors (ModelNotFoundError, InvalidModelNameError) for bad names
        and RuntimeError once the engine is shut down.
        """
        scheduler = self._lookup(model_name)
        if scheduler is not None:
            return scheduler
        if not self.registry.exists(model_name):
            self.registry.load(model_name)  # raises the registry's precise error
        with self._gate(model_name):
            scheduler = self._lookup(model_name)
            if scheduler is not None:
                return scheduler
            lm = self.registry.load(model_name)
            _warm_up(lm)
            scheduler = Scheduler(
                lm,
                max_batch=self.max_batch,
                max_waiting=self.max_waiting,
                prefill_chunk=self.prefill_chunk,
                prefill_budget=self.prefill_budget,
                observer=(
                    self.observer.for_model(model_name)
                    if isinstance(self.observer, PerModelObserver)
                    else self.observer
                ),
                lanes=decode_lanes(lm, self.decode_threads),
                decode_threads=self.decode_threads,
                max_state_memory=self.max_state_memory,
            )
            with self._lock:
                if self._closed:
                    raise RuntimeError("the engine is shut down")
                self._schedulers[model_name] = scheduler.start()
            logger.info("scheduler started for %s", model_name)
            return scheduler

    def started_scheduler(self, model_name: str) -> Scheduler | None:
        """The model's scheduler if it is already running, else None; never blocks on a load
        (so an event loop may call it). Raises RuntimeError once the engine is shut down."""
        return self._lookup(model_name)

    def submit(
        self,
        model_name: str,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        request_id: str | None = None,
        prompt_index: int = 0,
    ) -> GenerationStream:
        """`scheduler(model_name).submit(...)`; loads the model first if needed (blocking)."""
        return self.scheduler(model_name).submit(
            prompt_ids, params, request_id=request_id, prompt_index=prompt_index
        )

    def preload(self) -> None:
        """Load every preload model and start its scheduler (blocking; call off the loop)."""
        for name in self.preload_names:
            self.scheduler(name)

    def is_ready(self) -> bool:
        with self._lock:
            return not self._closed and all(n in self._schedulers for n in self.preload_names)

    def loaded_models(self) -> list[str]:
        with self._lock:
            return sorted(self._schedulers)

    def forget(self, model_name: str, timeout: float | None = 10.0) -> None:
        """Stop and drop the model's scheduler (its requests end with "abort").

        Call it when a model is re-registered: the next request loads the new weights.
        """
        with self._gate(model_name), self._lock:
            scheduler = self._schedulers.pop(model_name, None)
        if scheduler is not None:
            scheduler.stop(timeout)
            logger.info("scheduler stopped for %s", model_name)

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Stop every scheduler (pending requests end with "abort"); later calls fail."""
        with self._lock:
            self._closed = True
            schedulers = list(self._schedulers.values())
            self._schedulers.clear()
        for scheduler in schedulers:
            scheduler.stop(timeout)

    def stats(self) -> dict[str, Any]:
        """Per-model scheduler statistics and their totals, for /stats and /metrics."""
        with self._lock:
            schedulers = dict(self._schedulers)
        models = {name: s.stats().to_dict() for name, s in sorted(schedulers.items())}
        summed = (
            "running",
            "running_requests",
            "waiting",
            "prefilling",
            "total_requests",
            "tokens_generated",
            "free_slots",
            "state_memory_in_use",
        )
        totals: dict[str, Any] = {key: sum(m[key] for m in models.values()) for key in summed}
        totals["tokens_per_s"] = sum(m["tokens_per_s"] for m in models.values())
        return {"ready": self.is_ready(), "models": models, "totals": totals}

    def _lookup(self, model_name: str) -> Scheduler | None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine is shut down")
            return self._schedulers.get(model_name)

    def _gate(self, model_name: str) -> threading.Lock:
        """The lock that serialises loading one model (made only for models that exist)."""
        with self._lock:
            return self._loading.setdefault(model_name, threading.Lock())


def decode_lanes(lm: LanguageModel, threads: int) -> int:
    """Lanes for a model's scheduler: one per decode thread where the fused kernel applies
    (CPU, float32), else one; why, in `core.engine.lane`."""
    weight = lm.model.lm_head  # its device and dtype are the states' and activations'
    return threads if kernels.fused_applies(weight, weight) else 1


def _warm_up(lm: LanguageModel) -> None:
    """One decode step before serving: compiles (or loads) the fused kernel, so the first
    request does not pay for it and /ready means ready."""
    with torch.inference_mode():
        tokens = torch.zeros(1, dtype=torch.long, device=lm.device)
        lm.model.decode_step(tokens, tokens, lm.model.new_state(1))


def build_engine(settings: Settings, *, observer: EngineObserver | None = None) -> Engine:
    """The engine the settings describe; nothing is loaded until `preload()` or first use."""
    registry = ModelRegistry.from_settings(settings)
    budget = settings.generation.max_state_memory
    if budget is None:
        budget = default_state_memory(registry.device)
        logger.info(
            "state memory per model: %d MiB (%.0f%% of what is available)",
            budget >> 20,
            100 * DEFAULT_FRACTION,
        )
    return Engine(
        registry,
        max_batch=settings.generation.max_batch,
        max_waiting=settings.generation.max_waiting,
        preload=list(settings.model.preload),
        observer=observer,
        decode_threads=settings.model.decode_threads,
        max_state_memory=budget,
    )
