"""Benchmark-only routes beside the run convention: plots, CSV export and comparison.

    GET /api/benchmark/results/{id}/plot.png   the result drawn (also plot.svg)
    GET /api/benchmark/results/{id}.csv        the rows or levels as CSV
    GET /api/benchmark/compare?ids=a,b,...     rows matched by parameters, ratios to `a`

`{id}.csv` shares its prefix with the convention's `/results/{id}`, whose path parameter would
also match `abc.csv`: these routes work because `create_base_app` includes a component's own
routers before its convention routes (the first matching route serves a request).
"""

# No "from __future__ import annotations": FastAPI reads the route signatures at runtime.

import functools
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Query, Response
from pydantic import ValidationError

from benchmark_api import plots
from benchmark_api.compare import RunResult, compare
from benchmark_api.results import RESULT_MODELS, CompareResponse, EngineResult, ServingResult
from benchmark_api.tables import to_csv
from core.api.deps import RunServiceDep
from core.api.params import NO_NUL
from core.api.security import PrincipalDep
from core.errors import ErrorResponse, InvalidRequest, NotFound
from core.runs.router import make_valid_run
from core.runs.service import RunService
from core.store.models import Run

COMPONENT = "benchmark"
MAX_COMPARE = 10
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 409)
}

ValidRun = Annotated[Run, Depends(make_valid_run(COMPONENT))]


def finished_result(service: RunService, run: Run) -> EngineResult | ServingResult:
    """The run's (possibly partial) result; 409 before it finishes, 404 when it has none."""
    service.results(run=run)  # raises Conflict run_not_finished
    model = RESULT_MODELS.get(run.kind)
    if model is None or run.result is None:
        raise NotFound(f"run {run.id!r} has no result", param="id", code="result_not_found")
    try:
        result = model.model_validate(run.result)
    except ValidationError:
        raise NotFound(
            f"run {run.id!r} has no readable result", param="id", code="result_not_found"
        ) from None
    assert isinstance(result, EngineResult | ServingResult)
    return result


def _title(run: Run) -> str:
    state = "" if run.status == "succeeded" else f" ({run.status}, partial)"
    return f"benchmark {run.id[:12]} · {run.kind}{state}"


def _draw(service: RunService, run: Run, fmt: plots.PlotFormat) -> bytes:
    return plots.render(finished_result(service, run), fmt, title=_title(run))


def _csv(service: RunService, run: Run) -> str:
    return to_csv(finished_result(service, run))


async def _plot(run: Run, service: RunService, fmt: plots.PlotFormat) -> Response:
    image = await to_thread.run_sync(_draw, service, run, fmt)
    return Response(image, media_type=plots.MEDIA_TYPES[fmt])


def _parse_ids(ids: str) -> list[str]:
    parsed = list(dict.fromkeys(part.strip() for part in ids.split(",") if part.strip()))
    if len(parsed) < 2:
        raise InvalidRequest("give at least two distinct run ids: ids=a,b", param="ids")
    if len(parsed) > MAX_COMPARE:
        raise InvalidRequest(
            f"at most {MAX_COMPARE} runs can be compared", param="ids", code="limit_exceeded"
        )
    return parsed


def _load_for_compare(
    service: RunService, ids: list[str], visible_to: str | None
) -> list[RunResult]:
    loaded = []
    for run_id in ids:
        run = service.get(run_id=run_id, component=COMPONENT, visible_to=visible_to)
        result = finished_result(service, run)
        loaded.append(
            RunResult(
                id=run.id,
                kind=run.kind,
                model=run.model,
                status=run.status,
                created_at=run.created_at,
                result=result,
            )
        )
    return loaded


def build_views_router() -> APIRouter:
    router = APIRouter(prefix=f"/api/{COMPONENT}", tags=[COMPONENT], responses=_ERRORS)

    @router.get(
        "/results/{run_id}/plot.png",
        operation_id="benchmark_plot_png",
        summary="The result drawn as a PNG",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    async def plot_png(run: ValidRun, service: RunServiceDep) -> Response:
        return await _plot(run, service, "png")

    @router.get(
        "/results/{run_id}/plot.svg",
        operation_id="benchmark_plot_svg",
        summary="The result drawn as an SVG",
        response_class=Response,
        responses={200: {"content": {"image/svg+xml": {}}}},
    )
    async def plot_svg(run: ValidRun, service: RunServiceDep) -> Response:
        return await _plot(run, service, "svg")

    @router.get(
        "/results/{run_id}.csv",
        operation_id="benchmark_results_csv",
        summary="The rows (engine) or levels (serving) as CSV",
        response_class=Response,
        responses={200: {"content": {"text/csv": {}}}},
    )
    async def results_csv(run: ValidRun, service: RunServiceDep) -> Response:
        text = await to_thread.run_sync(_csv, service, run)
        disposition = f'attachment; filename="benchmark-{run.id}.csv"'
        return Response(
            text,
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": disposition},
        )

    @router.get(
        "/compare",
        operation_id="benchmark_compare",
        summary="Compare finished runs: rows matched by their parameters, with ratios",
    )
    async def compare_runs(
        service: RunServiceDep,
        principal: PrincipalDep,
        ids: Annotated[
            str,
            Query(max_length=1000, pattern=NO_NUL, description="Run ids, comma-separated."),
        ],
    ) -> CompareResponse:
        load = functools.partial(_load_for_compare, service, _parse_ids(ids), principal.visible_to)
        return compare(await to_thread.run_sync(load))

    return router
