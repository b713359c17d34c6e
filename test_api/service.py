"""Test runs: the job function that runs a suite case by case, and the suites catalogue.

Every case streams a ``case`` event ``{name, status, duration_ms, details}`` and moves the
run's progress. A failing case is a *failed case* in a run that succeeds; the run itself fails
only when the suite cannot run (model missing: ``model_not_found``; ``timeout_s`` exceeded:
``timeout``; anything else the suite cannot survive). A cancelled, timed-out or failed run
keeps the report of the cases that finished, as its partial result.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from pydantic import BaseModel

from core.runs.context import RunContext
from test_api.cases import Case, Plan, SuiteEnv, Watchdog, run_case
from test_api.schemas import SuiteInfo, SuiteOption, SuitesPublic, TestReport
from test_api.suites import SUITES

logger = logging.getLogger(__name__)


def run_suite(ctx: RunContext, request: Any) -> TestReport:
    """The job for every suite kind: plan the suite, then run its cases in order."""
    suite = SUITES[request.kind]
    watchdog = Watchdog(ctx.check_cancelled, request.timeout_s)
    env = SuiteEnv(settings=ctx.settings, engine=ctx.engine, watchdog=watchdog)
    report = TestReport(suite=request.kind, model=getattr(request, "model", None))
    started = time.perf_counter()
    try:
        ctx.progress(0.0, f"preparing the {request.kind} suite")
        plan: Plan = suite.plan(env, request)
        report.model, report.target = plan.model, plan.target
        try:
            _run_cases(ctx, watchdog, report, plan.cases)
        finally:
            plan.close()
    except BaseException:
        report.duration_ms = _elapsed_ms(started)
        _save_partial(ctx, report)
        raise
    report.duration_ms = _elapsed_ms(started)
    ctx.log("info", _verdict(report))
    return report


def _run_cases(ctx: RunContext, watchdog: Watchdog, report: TestReport, cases: list[Case]) -> None:
    for index, case in enumerate(cases):
        watchdog.check()
        result = run_case(case)
        report.add(result)
        ctx.emit("case", result.model_dump(mode="json"))
        ctx.progress((index + 1) / len(cases), f"{case.name}: {result.status.value}")


def _save_partial(ctx: RunContext, report: TestReport) -> None:
    try:
        ctx.save_partial_result(report)
    except Exception:
        # The run is ending anyway (cancelled, or no longer ours); the outcome still counts.
        logger.info("run %s: the partial report was not saved", ctx.run_id, exc_info=True)


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _verdict(report: TestReport) -> str:
    return (
        f"{report.suite} on {report.model or report.target.get('base_url')}: "
        f"{report.passed} passed, {report.failed} failed, {report.skipped} skipped, "
        f"{report.errored} errored"
    )


JOBS = {kind: run_suite for kind in SUITES}


# GET /api/test/suites -----------------------------------------------------------------------


def suite_catalogue() -> SuitesPublic:
    """Every suite with its cases and its options (defaults and JSON Schema)."""
    data = [
        SuiteInfo(
            kind=kind,
            description=module.DESCRIPTION,
            cases=list(module.CASE_NAMES),
            options=_options(module.REQUEST),
        )
        for kind, module in SUITES.items()
    ]
    return SuitesPublic(data=data, count=len(data))


def _options(model: type[BaseModel]) -> list[SuiteOption]:
    schema = model.model_json_schema()
    definitions = schema.get("$defs", {})
    options = []
    for name, field in model.model_fields.items():
        if name == "kind":
            continue
        fragment = dict(schema["properties"][name])
        if "$ref" in json.dumps(fragment):
            fragment["$defs"] = definitions
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        options.append(
            SuiteOption(
                name=name,
                required=field.is_required(),
                default=default,
                description=field.description,
                json_schema=fragment,
            )
        )
    return options
