"""The suites, one module each. A suite module declares ``KIND``, ``REQUEST`` (its request
model), ``DESCRIPTION``, ``CASE_NAMES`` and ``plan(env, request) -> Plan``."""

from __future__ import annotations

from types import ModuleType

from test_api.suites import consistency, endpoint, prompts, quality, smoke

SUITES: dict[str, ModuleType] = {
    module.KIND: module for module in (smoke, consistency, quality, prompts, endpoint)
}

__all__ = ["SUITES"]
