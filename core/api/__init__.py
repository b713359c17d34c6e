"""App plumbing: the app factory, dependencies, security, errors, middleware, system routes."""

from typing import Any

__all__ = ["ComponentSpec", "create_base_app", "no_engine"]


def __getattr__(name: str) -> Any:
    # Lazy, so that core.runs.router can import core.api.deps without a cycle through app.py.
    if name in __all__:
        from core.api import app

        return getattr(app, name)
    raise AttributeError(f"module 'core.api' has no attribute {name!r}")
