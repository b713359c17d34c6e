"""The component registry: every layer's one answer to "which components, where"."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from core.config import load_settings
from unified_api.components import ALL, COMPONENTS, SERVE_TARGETS, component, installed

ROOT = Path(__file__).resolve().parents[2]


def test_each_entry_is_the_component_its_package_declares() -> None:
    assert [entry.name for entry in installed()] == list(COMPONENTS)  # all ship here
    for name, entry in COMPONENTS.items():
        spec = entry.spec()
        assert spec.name == name and entry.app_module == f"{entry.package}.app"
        declared = spec.result_model
        for kind in spec.jobs:
            expected = declared[kind] if isinstance(declared, Mapping) else declared
            assert entry.result_model(kind) is expected
    assert (ALL, *COMPONENTS) == SERVE_TARGETS


def test_default_ports_are_distinct_and_leave_the_unified_port() -> None:
    ports = [entry.default_port for entry in COMPONENTS.values()]
    assert ports == [8001, 8002, 8003]  # generator, test, benchmark
    assert load_settings().server.port not in ports


def test_an_unknown_name_is_refused_with_the_known_ones() -> None:
    with pytest.raises(KeyError, match="unknown component 'chat': choose one of generator, test"):
        component("chat")


def test_a_missing_package_reads_as_not_installed() -> None:
    ghost = type(COMPONENTS["test"])("ghost", "no_such_package_here", default_port=9999)
    assert not ghost.installed() and ghost.module() is None
    assert ghost.result_model("any") is None
    with pytest.raises(ModuleNotFoundError, match="'ghost' is not installed"):
        ghost.spec()


def test_the_registry_and_the_clients_import_no_component_until_asked() -> None:
    code = (
        "import sys, clients, unified_api.components as c\n"
        "assert [e.name for e in c.installed()]\n"
        "apps = {'test_api.app', 'generator_api.app', 'benchmark_api.app'}\n"
        "print(sorted({'torch', 'fastapi', *apps} & set(sys.modules)))\n"
        "c.component('test').result_model('smoke')\n"
        "print('torch' in sys.modules and 'test_api.app' in sys.modules)\n"
    )
    shown = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split("\n")[:2] == ["[]", "True"]
