"""``/docs`` (Swagger UI) and ``/redoc`` with their assets served by the app, not a CDN.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so they render blank on a machine
without internet. The assets come from the pinned ``fastapi-offline`` package, which ships
the Swagger UI and ReDoc bundles as plain files; they are served as public files (they hold
no data), while ``/docs``, ``/redoc`` and ``/openapi.json`` stay behind auth like any route.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

ASSETS_PREFIX = "/docs-assets/"
_ASSET_NAMES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")


def docs_asset_files() -> dict[str, Path]:
    """Public path -> file, for the assets the docs pages load."""
    static = Path(str(resources.files("fastapi_offline") / "static"))
    return {ASSETS_PREFIX + name: static / name for name in _ASSET_NAMES}


def build_docs_router(title: str, openapi_url: str = "/openapi.json") -> APIRouter:
    router = APIRouter(include_in_schema=False)

    def asset(request: Request, name: str) -> str:
        return request.scope.get("root_path", "") + ASSETS_PREFIX + name

    @router.get("/docs")
    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=request.scope.get("root_path", "") + openapi_url,
            title=f"{title} - Swagger UI",
            swagger_js_url=asset(request, "swagger-ui-bundle.js"),
            swagger_css_url=asset(request, "swagger-ui.css"),
            swagger_favicon_url=asset(request, "favicon.png"),
            # The default validator badge calls an outside service for every page view.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @router.get("/redoc")
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=request.scope.get("root_path", "") + openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=asset(request, "redoc.standalone.js"),
            redoc_favicon_url=asset(request, "favicon.png"),
            with_google_fonts=False,
        )

    return router
