"""The run framework: context, events, service, executors and the convention router."""

from typing import Any

from core.runs.context import JobFn, RunContext, StopReason
from core.runs.events import EventBus, EventType
from core.runs.executor import Executor, JobTable, LocalExecutor, build_executor
from core.runs.service import RunService

__all__ = [
    "EventBus",
    "EventType",
    "Executor",
    "JobFn",
    "JobTable",
    "LocalExecutor",
    "RunContext",
    "RunService",
    "StopReason",
    "build_all_runs_router",
    "build_executor",
    "build_run_router",
]


def __getattr__(name: str) -> Any:
    # The router depends on core.api, which depends on this package: import it on first use.
    if name in ("build_run_router", "build_all_runs_router"):
        from core.runs import router

        return getattr(router, name)
    raise AttributeError(f"module 'core.runs' has no attribute {name!r}")
