"""The run convention (DESIGN §2), written once.

``build_run_router`` turns a component's declaration — its request model(s), result model(s)
and job functions — into every route under ``/api/{component}``: POST run, GET status,
GET results, GET runs, POST cancel, the WebSocket and the SSE stream. Components never write
these routes themselves.
"""

# No "from __future__ import annotations": FastAPI must read the route signatures below at
# runtime, and they refer to the request and result types of the component being built.

import functools
import logging
import operator
import types
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Union, get_args, get_origin

from fastapi import APIRouter, Body, Depends, Header, Query, Request, Response
from pydantic import BaseModel, TypeAdapter, ValidationError, create_model
from starlette.concurrency import run_in_threadpool

from core.api.deps import RunServiceDep
from core.api.params import Limit, Name, Offset, RunId
from core.api.security import Principal, PrincipalDep
from core.api.submission import current_submission
from core.errors import ErrorResponse, InvalidRequest
from core.runs.context import JobFn
from core.runs.service import RunService
from core.runs.streaming import add_stream_routes
from core.store.models import Run, RunPublic, RunsPublic, RunStatus, TestOutcome

logger = logging.getLogger(__name__)

# Known to every server's /api/runs, whichever of them it serves itself.
PLATFORM_COMPONENTS = ("test", "generator", "benchmark")
ResultModels = type[BaseModel] | Mapping[str, type[BaseModel]]
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 409, 422, 429)
}


def build_run_router(
    component: str,
    requests: Any,
    result_model: ResultModels,
    jobs: Mapping[str, JobFn],
    *,
    ping_interval_s: float = 15.0,
) -> APIRouter:
    """Every route of the run convention for ``component``, under ``/api/{component}``.

    ``requests`` is one pydantic model, or a union of models discriminated on ``kind``
    (optionally already ``Annotated`` with ``Field(discriminator="kind")``). ``jobs`` maps each
    kind to ``job(context, request) -> result``; a single model without ``kind`` takes the one
    job given. ``result_model`` is one model or one per kind.
    """
    check_job_table(component, requests, jobs)
    router = APIRouter(prefix=f"/api/{component}", tags=[component], responses=_ERRORS)
    valid_run = make_valid_run(component)
    ValidRun = Annotated[Run, Depends(valid_run)]

    _add_submit_route(router, component, requests, jobs)
    _add_read_routes(router, component, result_model, ValidRun)
    add_stream_routes(router, component, ValidRun, ping_interval_s=ping_interval_s)
    return router


def make_valid_run(component: str | None) -> Any:
    """A dependency loading the run named in the path, or raising 404.

    Runs of other components and — with auth on — of other keys are "not found" alike, so ids
    cannot be probed.
    """

    async def valid_run(
        run_id: RunId,
        service: RunServiceDep,
        principal: PrincipalDep,
    ) -> Run:
        get = functools.partial(
            service.get, run_id=run_id, component=component, visible_to=principal.visible_to
        )
        return await run_in_threadpool(get)

    return valid_run


def _add_submit_route(
    router: APIRouter, component: str, requests: Any, jobs: Mapping[str, JobFn]
) -> None:
    RequestBody = _body_annotation(requests)
    only_kind = next(iter(jobs)) if len(jobs) == 1 else None

    @router.post(
        "/run",
        status_code=202,
        operation_id=f"{component}_run",
        summary=f"Start a {component} run",
        responses={200: {"model": RunPublic, "description": "Replay of an idempotent request"}},
    )
    async def submit_run(
        body: RequestBody,  # type: ignore[valid-type]
        response: Response,
        service: RunServiceDep,
        principal: PrincipalDep,
        idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
    ) -> RunPublic:
        request: BaseModel = body
        kind = getattr(request, "kind", None) or only_kind
        if kind not in jobs:
            raise InvalidRequest(f"unknown {component} kind {kind!r}", param="kind")
        return await submit_request(
            request,
            component=component,
            kind=str(kind),
            response=response,
            service=service,
            principal=principal,
            idempotency_key=idempotency_key,
        )


async def submit_request(
    request: BaseModel,
    *,
    component: str,
    kind: str,
    response: Response,
    service: RunService,
    principal: Principal,
    idempotency_key: str | None,
) -> RunPublic:
    """Store ``request`` as a queued run (or replay its idempotent twin): the body of POST run.

    Also serves component routes that are aliases of POST run (``/api/generator/model``).
    """
    model = getattr(request, "model", None)
    params = request.model_dump(mode="json")
    nul_at = find_nul(params)
    if nul_at is not None:
        # PostgreSQL's JSONB cannot hold U+0000; refuse it on every store alike.
        raise InvalidRequest(
            "strings must not contain the NUL character (U+0000)", param=nul_at, status_code=422
        )
    create = functools.partial(
        service.create,
        component=component,
        kind=kind,
        params=params,
        model=model if isinstance(model, str) else None,
        owner=principal.owner,
        idempotency_key=idempotency_key,
        admit=_admission(request),
    )
    run, created = await run_in_threadpool(create)  # off the loop, admission checks included
    public = RunPublic.from_run(run)
    response.headers["Location"] = public.links.status
    if not created:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return public


def _admission(request: BaseModel) -> Callable[[], None] | None:
    """The request's own checks against this server (``admit(settings)``), if it has any."""
    admit = getattr(request, "admit", None)
    submission = current_submission()
    if not callable(admit) or submission is None:
        return None
    return functools.partial(admit, submission.settings)


def _add_read_routes(
    router: APIRouter, component: str, result_model: ResultModels, ValidRun: Any
) -> None:
    Results, parse_result = _results_model(component, result_model)

    @router.get("/status/{run_id}", operation_id=f"{component}_status")
    async def run_status(run: ValidRun) -> RunPublic:
        return RunPublic.from_run(run)

    @router.get("/results/{run_id}", operation_id=f"{component}_results", response_model=Results)
    async def run_results(run: ValidRun, service: RunServiceDep) -> Any:
        finished = service.results(run=run)  # no I/O: only checks the status
        return Results(run=RunPublic.from_run(finished), result=parse_result(finished))

    @router.get("/runs", operation_id=f"{component}_runs")
    async def list_runs(
        service: RunServiceDep, principal: PrincipalDep, filters: RunFiltersDep
    ) -> RunsPublic:
        return await list_page(service, principal.visible_to, component, filters)

    @router.post("/cancel/{run_id}", operation_id=f"{component}_cancel")
    async def cancel_run(run: ValidRun, service: RunServiceDep) -> RunPublic:
        cancelled = await run_in_threadpool(functools.partial(service.cancel, run_id=run.id))
        return RunPublic.from_run(cancelled)


class RunFilters:
    """The query parameters that `GET /api/{component}/runs` and `GET /api/runs` share."""

    def __init__(
        self,
        status: RunStatus | None = None,
        kind: Name = None,
        model: Name = None,
        limit: Limit = 50,
        offset: Offset = 0,
        outcome: Annotated[
            TestOutcome | None, Query(description="Finished test runs that passed, or failed")
        ] = None,
    ) -> None:
        self.status, self.kind, self.model = status, kind, model
        self.limit, self.offset, self.outcome = limit, offset, outcome


RunFiltersDep = Annotated[RunFilters, Depends()]


async def list_page(
    service: Any, visible_to: str | None, component: str | None, filters: RunFilters
) -> RunsPublic:
    query = functools.partial(
        service.list_runs,
        visible_to=visible_to,
        component=component,
        status=filters.status.value if filters.status else None,
        kind=filters.kind,
        model=filters.model,
        outcome=filters.outcome,
        limit=filters.limit,
        offset=filters.offset,
    )
    runs, count = await run_in_threadpool(query)
    return RunsPublic(data=[RunPublic.from_run(run) for run in runs], count=count)


def build_all_runs_router() -> APIRouter:
    """``GET /api/runs``: runs of every component, with the same filters.

    An unknown ``component`` is refused (422 ``unknown_component``) rather than answered with
    an empty list: a typo must not look like "no runs". The platform's components are known
    on every server, since servers sharing a store list each other's runs.
    """
    router = APIRouter(prefix="/api", tags=["runs"], responses=_ERRORS)

    @router.get("/runs", operation_id="all_runs")
    async def list_all_runs(
        request: Request,
        service: RunServiceDep,
        principal: PrincipalDep,
        filters: RunFiltersDep,
        component: Name = None,
    ) -> RunsPublic:
        if component is not None:
            served = (spec.name for spec in getattr(request.app.state, "components", ()))
            known = sorted({*PLATFORM_COMPONENTS, *served})
            if component not in known:
                raise InvalidRequest(
                    f"unknown component {component!r}: choose one of {', '.join(known)}",
                    code="unknown_component",
                    param="component",
                    status_code=422,
                )
        return await list_page(service, principal.visible_to, component, filters)

    return router


# Declarations -> types --------------------------------------------------------------------


def find_nul(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string (key or value) holding U+0000, else None."""
    if isinstance(value, str):
        return path or "body" if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return where
            found = find_nul(item, where)
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = find_nul(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def _request_types(requests: Any) -> tuple[Any, ...]:
    """The member models of a request declaration (a model, a union, an Annotated union)."""
    if get_origin(requests) is Annotated:
        requests = get_args(requests)[0]
    return get_args(requests) if get_origin(requests) in (Union, types.UnionType) else (requests,)


def _body_annotation(requests: Any) -> Any:
    members = _request_types(requests)
    if len(members) == 1:
        return Annotated[members[0], Body()]
    union = functools.reduce(operator.or_, members)
    return Annotated[union, Body(discriminator="kind")]


def request_parser(requests: Any) -> Any:
    """Stored params -> the validated request object (used by executors)."""
    members = _request_types(requests)
    adapter: TypeAdapter[Any] = TypeAdapter(
        members[0] if len(members) == 1 else _body_annotation(requests)
    )
    return adapter.validate_python


def check_job_table(component: str, requests: Any, jobs: Mapping[str, JobFn]) -> None:
    """Fail at start-up, not at the first run, when kinds and jobs do not line up."""
    if not jobs:
        raise ValueError(f"component {component!r} declares no jobs")
    kinds: set[str] = set()
    for member in _request_types(requests):
        field = getattr(member, "model_fields", {}).get("kind")
        if field is not None:
            values = get_args(field.annotation) or (field.default,)
            kinds.update(value for value in values if isinstance(value, str))
    missing = kinds - set(jobs)
    if missing:
        raise ValueError(f"component {component!r} has no job for kinds {sorted(missing)}")
    if not kinds and len(jobs) != 1:
        raise ValueError(f"component {component!r}: requests without 'kind' need exactly one job")


def _results_model(component: str, result_model: ResultModels) -> tuple[Any, Any]:
    """The results response model ``{run, result}`` and a function filling ``result``."""
    by_kind = dict(result_model) if isinstance(result_model, Mapping) else {}
    members: tuple[Any, ...] = tuple(dict.fromkeys(by_kind.values())) or (result_model,)
    result_type: Any = functools.reduce(operator.or_, members)
    name = "".join(part.title() for part in component.replace("-", "_").split("_"))
    Results = create_model(
        f"{name}RunResults",
        run=(RunPublic, ...),
        result=(result_type | None, None),
    )

    def parse_result(run: Run) -> BaseModel | None:
        if run.result is None:
            return None
        model = by_kind.get(run.kind) if by_kind else result_model
        if model is None or not isinstance(model, type):
            return None
        try:
            return model.model_validate(run.result)
        except ValidationError:
            # A partial result of a failed run may not be complete enough to validate.
            logger.warning("stored result of run %s does not match %s", run.id, model.__name__)
            return None

    return Results, parse_result
