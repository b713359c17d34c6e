"""The one map from component name to where it lives: package, app, routers, results, port.

Every layer that needs to know which components exist asks here: the unified app (which
specs to mount), ``hatchery serve`` (which app a target names), the clients (which model a
result parses into) and the CLI (the serve targets). Nothing is imported until asked: this
module itself imports only the standard library, so a client that keeps results as dicts
never imports a component (and through it torch).

    from unified_api.components import COMPONENTS, component
    component("generator").spec()            # its ComponentSpec (imports generator_api.app)
    component("generator").create_app(s)     # the component served alone
    component("test").result_model("smoke")  # TestReport, or None where not importable
    [c.name for c in installed()]            # those whose package this checkout ships

A component's own routes are on its ``ComponentSpec``: ``routers`` (under ``/api/{name}``)
and ``root_routers`` (outside it: the Generator's ``/v1/*``, ``/tokenize``, ``/detokenize``).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI
    from pydantic import BaseModel

    from core.api.app import ComponentSpec
    from core.config import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Component:
    """One component: its package, whose ``app`` module holds ``SPEC`` and ``create_app``."""

    name: str
    package: str
    # The port it listens on when served alone beside the others (docker compose, the
    # three-server topology); the unified server keeps ``server.port`` (8000).
    default_port: int

    @property
    def app_module(self) -> str:
        return f"{self.package}.app"

    def installed(self) -> bool:
        """Whether this checkout ships the component (looked up without importing it)."""
        try:
            return importlib.util.find_spec(self.app_module) is not None
        except ModuleNotFoundError:  # the package itself is absent
            return False

    def module(self) -> ModuleType | None:
        """The imported app module, or None when the component is not installed.

        Only the module itself being absent counts as "not installed": an import error inside
        an installed component is a bug and is raised.
        """
        return _import_app_module(self.app_module)

    def spec(self) -> ComponentSpec:
        """The component's declaration; raises ``ModuleNotFoundError`` when not installed."""
        spec: ComponentSpec = self._require().SPEC
        return spec

    def create_app(self, settings: Settings | None = None, **options: Any) -> FastAPI:
        """The component served alone, with the same paths as in the unified server.

        ``options`` go to ``core.api.app.create_base_app`` (e.g. the dashboard's files)."""
        app: FastAPI = self._require().create_app(settings, **options)
        return app

    def result_model(self, kind: str) -> type[BaseModel] | None:
        """The result model of runs of ``kind``, or None where the component cannot be
        imported (a client-only install) or declares none for that kind."""
        return _result_model(self.app_module, kind)

    def _require(self) -> ModuleType:
        module = self.module()
        if module is None:
            raise ModuleNotFoundError(
                f"component {self.name!r} is not installed ({self.app_module})",
                name=self.app_module,
            )
        return module


COMPONENTS: Mapping[str, Component] = {
    c.name: c
    for c in (
        Component("generator", "generator_api", default_port=8001),
        Component("test", "test_api", default_port=8002),
        Component("benchmark", "benchmark_api", default_port=8003),
    )
}
# What `hatchery serve TARGET` accepts: every component together, or one alone.
ALL = "all"
SERVE_TARGETS: tuple[str, ...] = (ALL, *COMPONENTS)
# `hatchery serve components`: every component alone, wired to the others (unified_api.topology).
COMPONENTS_TARGET = "components"


def component(name: str) -> Component:
    """The registered component ``name``; ``KeyError`` names the known ones."""
    try:
        return COMPONENTS[name]
    except KeyError:
        known = ", ".join(COMPONENTS)
        raise KeyError(f"unknown component {name!r}: choose one of {known}") from None


def installed() -> list[Component]:
    """The registered components this checkout ships, in registry order."""
    return [c for c in COMPONENTS.values() if c.installed()]


def installed_specs() -> list[ComponentSpec]:
    """The specs of every installed component (imports them)."""
    specs: list[ComponentSpec] = []
    for entry in COMPONENTS.values():
        module = entry.module()
        if module is not None:
            specs.append(module.SPEC)
    return specs


@functools.cache
def _import_app_module(module_name: str) -> ModuleType | None:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name in (module_name, module_name.rpartition(".")[0]):
            logger.info("component module %s is not available", module_name)
            return None
        raise


@functools.cache
def _result_model(module_name: str, kind: str) -> type[BaseModel] | None:
    try:
        module = _import_app_module(module_name)
    except ImportError:  # e.g. torch missing in a client-only environment
        logger.debug("%s is not importable; its results stay dicts", module_name)
        return None
    declared: Any = getattr(getattr(module, "SPEC", None), "result_model", None)
    model = declared.get(kind) if isinstance(declared, Mapping) else declared
    from pydantic import BaseModel

    return model if isinstance(model, type) and issubclass(model, BaseModel) else None
