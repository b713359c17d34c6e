"""Fixtures for the unified-server tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings in the developer's environment must not leak into these tests.
    for name in list(os.environ):
        if name.startswith("HATCHERY_") and "__" in name:
            monkeypatch.delenv(name)
