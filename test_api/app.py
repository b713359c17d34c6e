"""The Test component: model test suites as runs, plus ``GET /api/test/suites``.

``SPEC`` is what the unified server mounts; ``create_app`` serves the component alone. Either
way, the server must also install ``SubmissionContextMiddleware`` (``install_submission_context``)
so that ``POST /api/test/run`` can reject a ``base_url`` outside the allow-list with 400 and fill
in defaults from the server's settings; without it the same checks happen in the job instead.
"""

from __future__ import annotations

import functools
from typing import Any

from fastapi import APIRouter, FastAPI

from core.api.app import ComponentSpec, create_base_app
from core.config import Settings, load_settings
from test_api.outbound import SubmissionContextMiddleware
from test_api.schemas import SuitesPublic, TestReport, TestRequest
from test_api.service import JOBS, suite_catalogue


def build_suites_router() -> APIRouter:
    router = APIRouter(prefix="/api/test", tags=["test"])
    catalogue = functools.cache(suite_catalogue)

    @router.get(
        "/suites",
        operation_id="test_suites",
        response_model=SuitesPublic,
        summary="List the test suites with their cases, options and defaults",
    )
    async def list_suites() -> SuitesPublic:
        return catalogue()

    return router


SPEC = ComponentSpec(
    name="test",
    requests=TestRequest,
    result_model=TestReport,
    jobs=JOBS,
    routers=(build_suites_router(),),
)


def install_submission_context(app: FastAPI, settings: Settings) -> None:
    """Let request validation see this server's settings and address (see test_api.outbound)."""
    app.add_middleware(SubmissionContextMiddleware, settings=settings)


def create_app(settings: Settings | None = None, **options: Any) -> FastAPI:
    """The Test component alone, with the same paths as in the unified server."""
    settings = settings or load_settings()
    app = create_base_app(settings, components=[SPEC], title="Hatchery Test", **options)
    install_submission_context(app, settings)
    return app
