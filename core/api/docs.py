"""``/docs`` (Swagger UI) and ``/redoc`` with their assets served by the app, not a CDN.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so they render blank on a machine
without internet. The assets come from the pinned ``fastapi-offline`` package, which ships
the Swagger UI and ReDoc bundles as plain files; they are served as public files (they hold
no data), while ``/docs``, ``/redoc`` and ``/openapi.json`` stay behind auth like any route.

Both pages carry a Content-Security-Policy that keeps the browser on this origin: ReDoc's
sidebar links a logo from its vendor's CDN, which the policy stops before any request leaves
(the image hides itself when it cannot load), so the pages never call out, online or not.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

ASSETS_PREFIX = "/docs-assets/"
# The pages' own bootstrap scripts and ReDoc's styles are inline; its search runs in a worker.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
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
        return _confined(
            get_swagger_ui_html(
                openapi_url=request.scope.get("root_path", "") + openapi_url,
                title=f"{title} - Swagger UI",
                swagger_js_url=asset(request, "swagger-ui-bundle.js"),
                swagger_css_url=asset(request, "swagger-ui.css"),
                swagger_favicon_url=asset(request, "favicon.png"),
                # The default validator badge calls an outside service for every page view.
                swagger_ui_parameters={"validatorUrl": None},
            )
        )

    @router.get("/redoc")
    async def redoc(request: Request) -> HTMLResponse:
        return _confined(
            get_redoc_html(
                openapi_url=request.scope.get("root_path", "") + openapi_url,
                title=f"{title} - ReDoc",
                redoc_js_url=asset(request, "redoc.standalone.js"),
                redoc_favicon_url=asset(request, "favicon.png"),
                with_google_fonts=False,
            )
        )

    return router


def _confined(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page
