"""The unified server: every component on one port, sharing one engine and one store.

Mounts the Test, Generator and Benchmark components under ``/api/{component}`` (the same paths
each serves alone), the Generator's OpenAI-compatible routes (``/v1/*``, ``/tokenize``,
``/detokenize``, its spec's ``root_routers``), ``/api/runs`` across components, the system
routes, ``/docs`` and the dashboard at ``/ui``. The components are those of the registry
(``unified_api.components``) that are installed: one that is not is left out (and logged), so
the server runs with whichever components a deployment ships.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI

from core.api.app import ComponentSpec, create_base_app
from core.config import Settings, load_settings
from unified_api.components import installed_specs

logger = logging.getLogger(__name__)

UI_DIR = Path(__file__).resolve().parent / "ui"
DASHBOARD_FILES = {
    "/ui/": UI_DIR / "index.html",
    "/ui/dashboard.js": UI_DIR / "dashboard.js",
    "/ui/dashboard.css": UI_DIR / "dashboard.css",
    "/ui/templates.json": UI_DIR / "templates.json",
}
DASHBOARD_REDIRECTS = {"/ui": "/ui/"}


def create_app(
    settings: Settings | None = None,
    *,
    components: Sequence[ComponentSpec] | None = None,
    routers: Sequence[APIRouter] = (),
    **options: Any,
) -> FastAPI:
    """The unified app.

    ``components`` defaults to every installed component of ``unified_api.components`` (each
    spec brings its own routes, ``/v1`` included); tests pass their own, and app-level
    ``routers`` beside them. ``options`` go to ``core.api.app.create_base_app``.
    """
    settings = settings or load_settings()
    if components is None:
        components = installed_specs()
    app = create_base_app(
        settings,
        components=components,
        routers=routers,
        public_files=DASHBOARD_FILES,
        public_redirects=DASHBOARD_REDIRECTS,
        title="Hatchery",
        **options,
    )
    logger.debug("unified app serves components %s", [spec.name for spec in components])
    return app
