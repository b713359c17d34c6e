"""The base of every request body model: strict JSON types and text that is valid UTF-8.

- **Strict types**: a JSON ``true`` is not an integer and ``"2"`` is not a number, as the
  OpenAPI schema says; pydantic's lax mode would take both. (Integers still pass where a
  number is asked for: JSON has one number type.)
- **Valid UTF-8**: JSON may spell a lone surrogate (``"\\ud800"``); Python decodes it to a
  ``str`` that no UTF-8 encoder accepts, so it would fail later, in the tokenizer or the
  store, as a 500. Every string in the body, at any depth, is checked once, up front.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

INVALID_UTF8 = "invalid_utf8"
REQUEST_CONFIG = ConfigDict(extra="forbid", strict=True)


def first_invalid_text(value: Any, path: str = "") -> str | None:
    """The path of the first string in ``value`` that is not valid UTF-8, else None."""
    if isinstance(value, str):
        if value.isascii():
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
        return None
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        here = f"{path}.{key}" if path else str(key)
        found = first_invalid_text(key, here) if isinstance(key, str) else None
        if (found := found or first_invalid_text(item, here)) is not None:
            return found
    return None


def refuse_invalid_text(data: Any) -> Any:
    where = first_invalid_text(data)
    if where is not None:
        raise PydanticCustomError(
            INVALID_UTF8,
            "text at {where} is not valid UTF-8 (it holds a lone surrogate)",
            {"where": where},
        )
    return data


class RequestModel(BaseModel):
    """A request body (or part of one): strict types, no unknown fields, valid UTF-8."""

    model_config = REQUEST_CONFIG

    @model_validator(mode="before")
    @classmethod
    def _valid_utf8(cls, data: Any) -> Any:
        return refuse_invalid_text(data)


_SCHEMA_METADATA = ("title", "description", "default", "examples", "deprecated")


def one_or_many(schema: dict[str, Any]) -> None:
    """``json_schema_extra`` for a list field that also takes one item (``stop: "x"``): the
    schema says both forms, so a client (or a schema-driven test) knows a string is fine."""
    metadata = {key: schema.pop(key) for key in _SCHEMA_METADATA if key in schema}
    options = schema.pop("anyOf", None) or [dict(schema)]
    items = [option["items"] for option in options if option.get("type") == "array"]
    schema.clear()
    schema.update(metadata, anyOf=[*items, *options])
