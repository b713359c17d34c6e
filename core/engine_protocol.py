"""The engine seam: what the platform asks of a model engine.

The API layer (``core.api``), run contexts (``core.runs``) and the components reach the
engine only through ``ModelEngine``; ``core.engine.Engine`` implements it. A server may run
without an engine (``core.api.app.no_engine``): then the engine is ``None``, and code that
needs one calls ``require_engine``, which answers 503 ``engine_unavailable``.

This module imports no torch (the engine's types are for the type checker only), so the API
layer can name the seam without loading the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from core.config import Settings
from core.errors import NotReady

if TYPE_CHECKING:
    from core.engine.registry import ModelRegistry
    from core.engine.sampling import SamplingParams
    from core.engine.scheduler import Scheduler
    from core.engine.stream import GenerationStream


class ModelEngine(Protocol):
    """One process's model engine: a scheduler per loaded model over a model registry."""

    @property
    def registry(self) -> ModelRegistry: ...

    def scheduler(self, model_name: str) -> Scheduler:
        """The model's running scheduler, loading the model first if needed (blocking)."""
        ...

    def started_scheduler(self, model_name: str) -> Scheduler | None:
        """The model's scheduler if it already runs, else None; never blocks on a load."""
        ...

    def submit(
        self,
        model_name: str,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        request_id: str | None = None,
        prompt_index: int = 0,
    ) -> GenerationStream: ...

    def preload(self) -> None:
        """Load the models configured for preloading (blocking)."""
        ...

    def is_ready(self) -> bool:
        """Whether every preload model is loaded and the engine is not shut down."""
        ...

    def loaded_models(self) -> list[str]: ...

    def forget(self, model_name: str, timeout: float | None = 10.0) -> None:
        """Stop and drop the model's scheduler (a re-registered model loads anew)."""
        ...

    def shutdown(self, timeout: float | None = 10.0) -> None: ...

    def stats(self) -> dict[str, Any]:
        """``{"ready", "models": {name: scheduler stats}, "totals"}`` for /stats, /metrics."""
        ...


EngineFactory = Callable[[Settings], "ModelEngine | None"]
"""Builds a process's engine from its settings (``core.engine.build_engine``), or None for a
server without one (``core.api.app.no_engine``)."""


def require_engine(engine: ModelEngine | None) -> ModelEngine:
    """The engine, or NotReady ``engine_unavailable`` on a server that runs without one."""
    if engine is None:
        raise NotReady("this server runs without a model engine", code="engine_unavailable")
    return engine
