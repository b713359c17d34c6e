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
from typing import Any

from fastapi import APIRouter, FastAPI

from core.api.app import ComponentSpec, create_base_app
from core.config import Settings, load_settings
from unified_api.components import installed_specs
from unified_api.dashboard import UI_DIR, dashboard_options

logger = logging.getLogger(__name__)

__all__ = ["UI_DIR", "create_app"]


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
        title="Hatchery",
        **(dashboard_options() | options),
    )
    logger.debug("unified app serves components %s", [spec.name for spec in components])
    return app
