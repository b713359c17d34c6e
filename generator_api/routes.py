"""The generator's own routes besides the run convention and the OpenAI API.

GET  /api/generator/templates   the model templates a ``model`` run can build from
POST /api/generator/model       alias for ``POST /api/generator/run`` with kind "model"
WS   /api/generator/stream      interactive generation (see `interactive`)
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Response

from core.api.deps import RunServiceDep
from core.api.security import PrincipalDep
from core.errors import ErrorResponse
from core.runs.router import submit_request
from core.store.models import RunPublic

from .interactive import add_interactive_route
from .schemas import ModelRunRequest
from .templates import ModelTemplates, model_templates

COMPONENT = "generator"
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 409, 422, 429)
}


def build_generator_router() -> APIRouter:
    router = APIRouter(prefix=f"/api/{COMPONENT}", tags=[COMPONENT], responses=_ERRORS)

    @router.get("/templates", operation_id="generator_model_templates")
    async def list_model_templates() -> ModelTemplates:
        """Model templates (architecture presets), with their sizes."""
        return model_templates()

    @router.post(
        "/model",
        status_code=202,
        operation_id="generator_create_model",
        responses={200: {"model": RunPublic, "description": "Replay of an idempotent request"}},
    )
    async def create_model_run(
        body: ModelRunRequest,
        response: Response,
        service: RunServiceDep,
        principal: PrincipalDep,
        idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
    ) -> RunPublic:
        """Start a ``model`` run: exactly ``POST /api/generator/run`` with ``kind: "model"``."""
        return await submit_request(
            body,
            component=COMPONENT,
            kind="model",
            response=response,
            service=service,
            principal=principal,
            idempotency_key=idempotency_key,
        )

    add_interactive_route(router)
    return router
