"""Parsing run results into the components' own result models, when they are importable.

The clients must work where only the client side is installed, so the component packages are
imported lazily and optionally: without them (or for a result of another shape, such as the
partial result of a failed run) the result stays the JSON dict the server sent. Importing
them costs what they import (torch, through the engine): clients created with
``typed_results=False`` skip it and always keep dicts.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

logger = logging.getLogger(__name__)

# component -> the module declaring it; its ``SPEC.result_model`` (one model, or one per kind)
# is the component's own statement of what its results are.
COMPONENT_MODULES = {
    "test": "test_api.app",
    "generator": "generator_api.app",
    "benchmark": "benchmark_api.app",
}


@functools.cache
def result_model(component: str, kind: str) -> type[BaseModel] | None:
    """The result model class of a component's kind, or None where it cannot be imported."""
    module_name = COMPONENT_MODULES.get(component)
    if module_name is None:
        return None
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        logger.debug("%s is not importable; %s results stay dicts", module_name, component)
        return None
    declared = getattr(getattr(module, "SPEC", None), "result_model", None)
    model = declared.get(kind) if isinstance(declared, Mapping) else declared
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def parse_result(component: str, kind: str, data: Any) -> Any:
    """``data`` as the component's result model if it validates, else unchanged."""
    if not isinstance(data, dict):
        return data
    model = result_model(component, kind)
    if model is None:
        return data
    try:
        return model.model_validate(data)
    except ValidationError:
        logger.debug("result of a %s %s run does not match %s", component, kind, model.__name__)
        return data
