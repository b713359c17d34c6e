"""HATCHERY_REQUIRE_POSTGRES: the switch that makes PostgreSQL tests mandatory (CI sets it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.server import free_port

ROOT = Path(__file__).resolve().parents[2]
# One small test that runs on SQLite and PostgreSQL alike (the `store` fixture).
PG_CASE = "tests/core/test_store.py::test_create_get_and_first_event[postgres]"


def run_pg_case(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("HATCHERY_TEST_DATABASE_URL",)}
    clean.pop("HATCHERY_REQUIRE_POSTGRES", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", PG_CASE, "-q", "-rs", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("url", ["", "unreachable"])
def test_without_a_database_postgres_tests_skip_unless_required(url: str) -> None:
    env = {}
    if url:  # a port where nothing listens
        env["HATCHERY_TEST_DATABASE_URL"] = (
            f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x"
        )
    skipped = run_pg_case(**env)
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout
    failed = run_pg_case(**env, HATCHERY_REQUIRE_POSTGRES="1")
    # Failed in its fixture: pytest counts an error, and the run exits 1 (not green).
    assert failed.returncode == 1 and "1 error" in failed.stdout, failed.stdout
    assert "HATCHERY_REQUIRE_POSTGRES is set: PostgreSQL tests must run" in failed.stdout
