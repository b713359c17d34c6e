"""The Generator component: batch generation and model creation runs, the OpenAI-compatible
API, interactive WebSocket generation.

`SPEC` declares the component; its ``routers`` already hold every extra route (``/v1/*``,
``/tokenize``, ``/detokenize``, ``/api/generator/templates``, ``/api/generator/model``,
``WS /api/generator/stream``), so ``create_base_app(settings, components=[SPEC, ...])`` serves
all of it. `extra_routers()` builds a fresh set of the same routers for apps that mount them
some other way (do not mount both).

    uvicorn --factory generator_api.app:create_app      # settings from HATCHERY_* / defaults
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI

from core.api.app import ComponentSpec, create_base_app
from core.config import Settings, load_settings

from .openai import build_openai_router
from .routes import COMPONENT, build_generator_router
from .schemas import RESULT_MODELS, GeneratorRequest
from .service import create_model_job, generate_text


def extra_routers() -> list[APIRouter]:
    """The OpenAI-compatible router and the generator's own routes."""
    return [build_openai_router(), build_generator_router()]


SPEC = ComponentSpec(
    name=COMPONENT,
    requests=GeneratorRequest,
    result_model=RESULT_MODELS,
    jobs={"text": generate_text, "model": create_model_job},
    routers=tuple(extra_routers()),
)


def create_app(settings: Settings | None = None, **options: Any) -> FastAPI:
    """The Generator served alone (same paths as in the unified server)."""
    return create_base_app(
        settings or load_settings(),
        components=[SPEC],
        title="Hatchery Generator",
        **options,
    )
