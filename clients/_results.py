"""Parsing run results into the components' own result models, when they are importable.

The clients must work where only the client side is installed, so the component packages are
imported lazily and optionally (through ``unified_api.components``): without them (or for a
result of another shape, such as the partial result of a failed run) the result stays the
JSON dict the server sent. Importing them costs what they import (torch, through the
engine): clients created with ``typed_results=False`` skip it and always keep dicts.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ValidationError

from unified_api.components import COMPONENTS

logger = logging.getLogger(__name__)


def result_model(component: str, kind: str) -> type[BaseModel] | None:
    """The result model class of a component's kind, or None where it cannot be imported."""
    entry = COMPONENTS.get(component)
    return entry.result_model(kind) if entry is not None else None


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
