"""Two kinds of template, not to be confused:

* **chat templates** turn a list of chat messages into the prompt a byte model continues. They
  are Jinja2 sources (the Hugging Face convention: ``messages``, ``add_generation_prompt``,
  ``raise_exception``) stored in a model's metadata under ``chat_template``; models without one
  use `DEFAULT_CHAT_TEMPLATE` ("User: …\\nAssistant:"), which suits plain-text byte models.
  Templates come from model files, so they are rendered in Jinja2's
  ``ImmutableSandboxedEnvironment``: no attribute tricks, no mutation of the messages.
* **model templates** are architecture presets (`core.engine.training.TEMPLATES`: bdh-nano,
  bdh-tiny, …) that a generator ``model`` run builds a new model from; `model_templates()`
  lists them for ``GET /api/generator/templates``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel

from core.engine.creation import DEFAULT_CHAT_TEMPLATE
from core.engine.training import TEMPLATES
from core.errors import InvalidRequest, PlatformError

__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "ModelTemplate",
    "ModelTemplates",
    "chat_template_of",
    "model_templates",
    "render_chat",
]


class _TemplateRaised(Exception):
    """`raise_exception(...)` called by a chat template: the messages are not acceptable."""


def _raise_exception(message: str) -> NoReturn:
    raise _TemplateRaised(message)


@functools.lru_cache(maxsize=64)
def _compile(source: str) -> Any:
    """Compile a chat template once per distinct source (templates come from model metadata)."""
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = _raise_exception
    try:
        return environment.from_string(source)
    except TemplateError as exc:
        raise PlatformError(
            f"the model's chat template does not compile: {exc}", code="invalid_chat_template"
        ) from exc


def chat_template_of(metadata: Mapping[str, Any]) -> str:
    """The model's own chat template, or the default for byte models."""
    source = metadata.get("chat_template")
    return source if isinstance(source, str) and source.strip() else DEFAULT_CHAT_TEMPLATE


def render_chat(
    source: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
) -> str:
    """Render `messages` (dicts with role and content) into one prompt string.

    A template that refuses the messages (``raise_exception``) or fails on them is the
    client's problem: 400 ``invalid_chat_messages``. Sandbox violations are reported alike.
    """
    template = _compile(source)
    try:
        return str(
            template.render(messages=list(messages), add_generation_prompt=add_generation_prompt)
        )
    except _TemplateRaised as exc:
        raise InvalidRequest(str(exc), param="messages", code="invalid_chat_messages") from exc
    except TemplateError as exc:  # includes SecurityError from the sandbox
        raise InvalidRequest(
            f"the chat template cannot render these messages: {exc}",
            param="messages",
            code="invalid_chat_messages",
        ) from exc


# Model templates ------------------------------------------------------------------------------


class ModelTemplate(BaseModel):
    name: str
    description: str
    config: dict[str, Any]
    parameters: int
    size_mb: float
    state_mb_per_sequence: float


class ModelTemplates(BaseModel):
    data: list[ModelTemplate]
    count: int


def model_templates() -> ModelTemplates:
    data = [ModelTemplate.model_validate(t.summary()) for t in TEMPLATES.values()]
    return ModelTemplates(data=data, count=len(data))
