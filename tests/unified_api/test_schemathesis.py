"""Property-based API tests: schemathesis against a real unified server's ``/openapi.json``.

For every operation in the document, schemathesis draws a bounded number of requests from the
schema and checks each answer: never a 5xx, a status the document lists, the documented
content type and headers, a body that matches the response schema. Four servers: auth off
and on, on SQLite and on PostgreSQL. The executor runs nothing (concurrency 0: runs are
accepted and stay queued) and the generation limits are tiny, so every case is cheap.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import engine_settings, postgres_schema
from tests.support.server import LiveServer
from tests.unified_api.helpers import wait_ready
from unified_api.app import create_app

KEY = "schemathesis-key"
EXAMPLES_PER_OPERATION = 8
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Cases that break the schema on purpose must be refused (4xx): nothing coerced or ignored.
NEGATIVE_CHECKS = [*CHECKS, negative_data_rejection]
SETTINGS = {
    "model.preload": ["bdh-nano"],
    "executor.concurrency": {"test": 0, "generator": 0, "benchmark": 0},
    "generation.max_tokens_limit": 4,
    "generation.max_tokens": 4,
    "generation.max_prompt_bytes": 256,
    "generation.max_n": 2,
    "auth.max_failures_per_minute": 100_000,
}


@pytest.mark.parametrize(
    ("store", "auth"),
    [
        ("sqlite", False),
        ("sqlite", True),
        pytest.param("postgres", False, marks=pytest.mark.postgres),
        pytest.param("postgres", True, marks=pytest.mark.postgres),
    ],
    ids=["sqlite-auth-off", "sqlite-auth-on", "postgres-auth-off", "postgres-auth-on"],
)
def test_every_operation_keeps_its_contract(
    store: str,
    auth: bool,
    tmp_path: Path,
    models_dir: Path,
) -> None:
    with contextlib.ExitStack() as stack:
        url = (
            f"sqlite:///{tmp_path / 'hatchery.db'}"
            if store == "sqlite"
            else stack.enter_context(postgres_schema())
        )
        overrides = SETTINGS | ({"auth.enabled": True, "auth.api_keys": [KEY]} if auth else {})
        server = LiveServer(create_app(engine_settings(url, models_dir, **overrides)))
        server.start()
        stack.callback(server.stop)
        headers = {"X-API-Key": KEY} if auth else {}
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
            wait_ready(client)
        api = schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=headers)
        tally, failures = exercise(api, server.url, headers)
    line = (
        f"schemathesis [{store}, auth {'on' if auth else 'off'}]: {tally['operations']} "
        f"operations, {tally['cases']} cases ({tally['positive']} positive, "
        f"{tally['negative']} negative), {tally['5xx']} 5xx, {len(failures)} violations"
    )
    print(line)  # the figures the issue's note quotes (pytest -s, or -rP, shows them)
    assert tally["operations"] > 40 and tally["cases"] > tally["operations"], (line, failures[:1])
    assert not failures, "\n\n".join(failures)


def exercise(api: Any, base_url: str, headers: dict[str, str]) -> tuple[Counter[str], list[str]]:
    """Every operation, EXAMPLES_PER_OPERATION drawn cases each: the tally and the failures."""
    tally: Counter[str] = Counter()
    failures: list[str] = []
    operations = [result.ok() for result in api.get_all_operations()]
    tally["operations"] = len(operations)
    for operation, mode in itertools.product(operations, GenerationMode):
        if mode is GenerationMode.NEGATIVE and not (operation.query or operation.body):
            continue  # nothing but a path or nothing at all: no case can break the schema
        check = case_checker(mode, base_url, headers, tally)
        try:
            given(case=operation.as_strategy(generation_mode=mode))(check)()
        except (Exception, BaseExceptionGroup) as exc:  # one failure an operation will do
            failures.append(f"{operation.label} ({mode.value}): {exc}")
    return tally, failures


def case_checker(
    mode: GenerationMode, base_url: str, headers: dict[str, str], tally: Counter[str]
) -> Any:
    """Sends one case and checks the answer (the body of a hypothesis test)."""
    checks = NEGATIVE_CHECKS if mode is GenerationMode.NEGATIVE else CHECKS

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,  # the same cases every run: a failure here is reproducible
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def check(case: Any) -> None:
        tally["cases"] += 1
        tally[mode.value] += 1
        response = case.call(base_url=base_url, headers=headers, timeout=60)
        tally["5xx"] += response.status_code >= 500
        case.validate_response(response, checks=checks)

    return check
