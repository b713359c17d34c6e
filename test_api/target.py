"""The model under test: found in the registry, loaded on the requested device and dtype, and
generation from it — through the engine's scheduler (the serving path) or directly.

The shared engine's registry is used when there is one, so a model the server already serves
is not loaded twice; the suites only read the weights, so sharing them with the scheduler
thread is safe.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from core.config import Settings
from core.engine import GenerationStream, LanguageModel, ModelRegistry
from core.engine.checkpoint import CheckpointError
from core.engine.language_model import PREFILL_CHUNK
from core.engine.registry import (
    InvalidModelNameError,
    ModelInfo,
    resolve_device,
    resolve_dtype,
)
from core.engine.sampling import SamplingParams
from core.engine.scheduler import EngineOverloaded
from core.engine.sequence import CompletionOutput, SequenceDecoder
from core.engine_protocol import ModelEngine, require_engine
from core.errors import InvalidRequest, NotFound, PlatformError
from core.peers import ensure_model
from test_api.cases import Watchdog
from test_api.schemas import ModelSuiteRequest

logger = logging.getLogger(__name__)

STREAM_POLL_S = 0.25  # how often a wait on the scheduler checks for cancel / timeout


@dataclass
class ModelTarget:
    """A model chosen for a run; ``lm`` is set once it is loaded."""

    name: str
    info: ModelInfo
    registry: ModelRegistry
    engine: ModelEngine | None
    device: torch.device
    dtype: torch.dtype
    lm: LanguageModel | None = None

    @property
    def served(self) -> bool:
        """Whether the engine's scheduler runs this very (device, dtype) copy of the model."""
        return (
            self.engine is not None
            and self.engine.registry is self.registry
            and self.registry.device == self.device
            and self.registry.dtype == self.dtype
        )

    def describe(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "parameters": self.info.config.parameter_count(),
            "config": self.info.config.to_dict(),
            "torch": torch.__version__,
        }

    def load(self) -> LanguageModel:
        if self.lm is None:
            self.lm = self.registry.load(self.name, device=self.device, dtype=self.dtype)
        return self.lm


def load_or_fail(target: ModelTarget) -> LanguageModel:
    """Load for a suite that cannot run without the model: a bad checkpoint fails the run."""
    try:
        return target.load()
    except CheckpointError as exc:
        raise PlatformError(
            f"model {target.name!r} does not load: {exc}", code="invalid_checkpoint"
        ) from None


def find_target(
    settings: Settings, engine: ModelEngine | None, request: ModelSuiteRequest
) -> ModelTarget:
    """The model the request names, not yet loaded; NotFound ``model_not_found`` if absent."""
    registry = ModelRegistry.of(settings, engine)
    name = request.model or settings.model.default
    try:
        registry.path_of(name)
        # A model this server lacks is fetched from the generator (services.generator_url).
        exists = ensure_model(registry, name, settings)
    except InvalidModelNameError as exc:
        raise InvalidRequest(str(exc), code="invalid_model_name", param="model") from None
    if not exists:
        available = ", ".join(registry.names()) or "none"
        raise NotFound(
            f"model {name!r} not found (available: {available})",
            code="model_not_found",
            param="model",
        )
    device = _device(request.device or settings.model.device)
    dtype = resolve_dtype(request.dtype or settings.model.dtype)
    return ModelTarget(name, registry.info(name), registry, engine, device, dtype)


def _device(name: str) -> torch.device:
    device = resolve_device(name)
    if device.type == "cuda":
        index = device.index or 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise InvalidRequest(
                f"device {name!r} is not available on this server",
                code="device_unavailable",
                param="device",
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidRequest(
            "device 'mps' is not available on this server", code="device_unavailable"
        )
    return device


# Generation ---------------------------------------------------------------------------------


def generate(
    target: ModelTarget,
    prompt_ids: list[int],
    params: SamplingParams,
    watchdog: Watchdog,
    *,
    via_engine: bool,
) -> CompletionOutput:
    """One completion (n=1); ``via_engine`` needs ``target.served``."""
    if via_engine:
        return generate_served(target, prompt_ids, params, watchdog)
    return generate_direct(target.load(), prompt_ids, params, watchdog)


@torch.no_grad()
def generate_direct(
    lm: LanguageModel, prompt_ids: list[int], params: SamplingParams, watchdog: Watchdog
) -> CompletionOutput:
    """What the model computes, token by token, with the recurrent form (as `LanguageModel`)."""
    sequence = SequenceDecoder(prompt_ids, params, vocab_size=lm.config.vocab_size)
    ids = torch.tensor([prompt_ids], device=lm.device)
    logits, state = lm.model.prefill(ids, chunk_size=PREFILL_CHUNK)  # (1, V)
    sequence.accept(logits[0])
    while not sequence.finished:
        watchdog.check()
        token = torch.tensor([sequence.last_token], device=lm.device)
        position = torch.tensor([sequence.position], device=lm.device)
        sequence.accept(lm.model.decode_step(token, position, state)[0])
    return sequence.output()


def generate_served(
    target: ModelTarget, prompt_ids: list[int], params: SamplingParams, watchdog: Watchdog
) -> CompletionOutput:
    """Through the engine's continuous-batching scheduler, as the server generates."""
    stream = submit_served(target, prompt_ids, params, watchdog)
    with stream:  # aborted on the way out unless finished (cancel, timeout)
        wait_for_stream(stream, watchdog)
    outputs: list[CompletionOutput] = stream.outputs()
    return outputs[0]


def submit_served(
    target: ModelTarget, prompt_ids: list[int], params: SamplingParams, watchdog: Watchdog
) -> GenerationStream:
    """Submit to the engine, waiting while its queue is full."""
    engine = require_engine(target.engine)
    while True:
        try:
            return engine.submit(target.name, prompt_ids, params)
        except EngineOverloaded as exc:
            watchdog.check()
            logger.info("engine busy; retrying in %.2f s", exc.retry_after)
            _sleep_checked(min(exc.retry_after, 1.0), watchdog)


def wait_for_stream(stream: GenerationStream, watchdog: Watchdog) -> None:
    while not stream.finished:
        watchdog.check()
        try:
            for _ in stream.iter_sync(timeout=STREAM_POLL_S):
                watchdog.check()
        except TimeoutError:
            continue


def _sleep_checked(seconds: float, watchdog: Watchdog) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        watchdog.check()
        time.sleep(min(STREAM_POLL_S, max(0.0, end - time.monotonic())))
