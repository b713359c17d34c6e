"""The Generator component: batch generation and model creation runs, the OpenAI-compatible
API, interactive WebSocket generation.

`SPEC` declares the component: its ``routers`` hold its own routes under ``/api/generator``
(``templates``, ``model``, ``models`` with each model's files for other servers to
fetch, ``WS stream``), its ``root_routers`` the OpenAI-compatible ones
outside it (``/v1/*``, ``/tokenize``, ``/detokenize``), so
``create_base_app(settings, components=[SPEC, ...])`` serves all of it.

    uvicorn --factory generator_api.app:create_app      # settings from HATCHERY_* / defaults
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from core.api.app import ComponentSpec, create_base_app
from core.config import Settings, load_settings

from .model_routes import build_model_files_router
from .openai import build_openai_router
from .routes import COMPONENT, build_generator_router
from .schemas import RESULT_MODELS, GeneratorRequest
from .service import create_model_job, generate_text

SPEC = ComponentSpec(
    name=COMPONENT,
    requests=GeneratorRequest,
    result_model=RESULT_MODELS,
    jobs={"text": generate_text, "model": create_model_job},
    routers=(build_generator_router(), build_model_files_router()),
    root_routers=(build_openai_router(),),
)


def create_app(settings: Settings | None = None, **options: Any) -> FastAPI:
    """The Generator served alone (same paths as in the unified server)."""
    return create_base_app(
        settings or load_settings(),
        components=[SPEC],
        title="Hatchery Generator",
        **options,
    )
