"""The Benchmark component: its declaration (`SPEC`) and its own server (`create_app`).

    uvicorn --factory benchmark_api.app:create_app      # settings from HATCHERY_* / defaults

Runs: `POST /api/benchmark/run` with `kind` `engine` or `serving` (benchmark_api.schemas);
beside them the plot, CSV and comparison routes of `SPEC.routers` (benchmark_api.views).
Checks that need the server's settings answer 400 at submission on any server built by
`create_base_app` (core.api.submission); jobs repeat them against their worker's settings.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from benchmark_api.results import RESULT_MODELS
from benchmark_api.schemas import BenchmarkRequest
from benchmark_api.service import JOBS
from benchmark_api.views import build_views_router
from core.api.app import ComponentSpec, create_base_app
from core.config import Settings, load_settings

SPEC = ComponentSpec(
    name="benchmark",
    requests=BenchmarkRequest,
    result_model=RESULT_MODELS,
    jobs=JOBS,
    routers=(build_views_router(),),
)


def create_app(settings: Settings | None = None, **options: Any) -> FastAPI:
    """The Benchmark component alone, with the same paths as in the unified server."""
    settings = settings or load_settings()
    return create_base_app(settings, components=[SPEC], title="Hatchery Benchmark", **options)
