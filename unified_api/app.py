"""The unified server: every component on one port, sharing one engine and one store.

Mounts the Test, Generator and Benchmark components under ``/api/{component}`` (the same paths
each serves alone), the Generator's OpenAI-compatible routes (``/v1/*``, ``/tokenize``,
``/detokenize``), ``/api/runs`` across components, the system routes, ``/docs`` and the
dashboard at ``/ui``. Components are discovered by import: one that is not installed is left
out (and logged), so the server runs with whichever components a deployment ships.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from fastapi import APIRouter, FastAPI

from core.api.app import ComponentSpec, create_base_app
from core.config import Settings, load_settings

logger = logging.getLogger(__name__)

# Component name -> the module whose SPEC and create_app serve it.
COMPONENT_MODULES = {
    "test": "test_api.app",
    "generator": "generator_api.app",
    "benchmark": "benchmark_api.app",
}
# Functions a component module may offer for routes that sit outside /api/{component}
# (the Generator's /v1 routes), when its SPEC.routers does not already carry them.
_EXTRA_ROUTER_FUNCTIONS = ("openai_routers", "extra_routers", "build_openai_router")

UI_DIR = Path(__file__).resolve().parent / "ui"
DASHBOARD_FILES = {
    "/ui/": UI_DIR / "index.html",
    "/ui/dashboard.js": UI_DIR / "dashboard.js",
    "/ui/dashboard.css": UI_DIR / "dashboard.css",
    "/ui/templates.json": UI_DIR / "templates.json",
}
DASHBOARD_REDIRECTS = {"/ui": "/ui/"}


def import_component(name: str) -> ModuleType | None:
    """The component's app module, or None when that component is not installed.

    Only the module itself being absent counts as "not installed": an import error inside an
    installed component is a bug and is raised.
    """
    module_name = COMPONENT_MODULES[name]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name in (module_name, module_name.rpartition(".")[0]):
            logger.info("component %s is not available (%s not found)", name, exc.name)
            return None
        raise


def available_components() -> list[ModuleType]:
    modules = (import_component(name) for name in COMPONENT_MODULES)
    return [module for module in modules if module is not None]


def component_routers(module: ModuleType, spec: ComponentSpec) -> list[APIRouter]:
    """The module's extra app-level routers, minus routes its SPEC already mounts."""
    mounted = set(_route_keys(spec.routers))
    routers: list[APIRouter] = []
    for name in _EXTRA_ROUTER_FUNCTIONS:
        function = getattr(module, name, None)
        if callable(function):
            produced = function()
            routers.extend(produced if isinstance(produced, Sequence) else [produced])
            break
    return [router for router in routers if not set(_route_keys([router])) <= mounted]


def _route_keys(routers: Sequence[APIRouter]) -> Iterator[tuple[str, frozenset[str]]]:
    for router in routers:
        for route in router.routes:
            methods = getattr(route, "methods", None) or {"WEBSOCKET"}
            yield getattr(route, "path", ""), frozenset(methods)


def create_app(
    settings: Settings | None = None,
    *,
    components: Sequence[ComponentSpec] | None = None,
    routers: Sequence[APIRouter] | None = None,
    **options: Any,
) -> FastAPI:
    """The unified app.

    ``components`` / ``routers`` default to every installed component and its extra routes;
    tests pass their own. ``options`` go to ``core.api.app.create_base_app``.
    """
    settings = settings or load_settings()
    if components is None:
        specs: list[ComponentSpec] = []
        extra: list[APIRouter] = []
        for module in available_components():
            spec: ComponentSpec = module.SPEC
            specs.append(spec)
            extra.extend(component_routers(module, spec))
        components = specs
        routers = extra if routers is None else routers
    app = create_base_app(
        settings,
        components=components,
        routers=routers or (),
        public_files=DASHBOARD_FILES,
        public_redirects=DASHBOARD_REDIRECTS,
        title="Hatchery",
        **options,
    )
    logger.debug("unified app serves components %s", [spec.name for spec in components])
    return app
