"""The Test component: model test suites as runs, plus ``GET /api/test/suites``.

``SPEC`` is what the unified server mounts; ``create_app`` serves the component alone. Either
way ``POST /api/test/run`` rejects a ``base_url`` outside the allow-list with 400 and fills in
defaults from the server's settings (``core.api.submission``, installed by ``create_base_app``).
"""

from __future__ import annotations

import functools
from typing import Any

from fastapi import APIRouter, FastAPI

from core.api.app import ComponentSpec, create_base_app
from core.config import Settings, load_settings
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


def create_app(settings: Settings | None = None, **options: Any) -> FastAPI:
    """The Test component alone, with the same paths as in the unified server."""
    settings = settings or load_settings()
    return create_base_app(settings, components=[SPEC], title="Hatchery Test", **options)
