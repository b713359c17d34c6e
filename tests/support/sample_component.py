"""A tiny component for testing the run framework, with its own small jobs.

``create_app()`` (no arguments) reads settings from the environment, so a real server
subprocess can be started with
``python -m uvicorn --factory tests.support.sample_component:create_app``.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import FastAPI
from pydantic import BaseModel, Field

from core.api.app import ComponentSpec, create_base_app, no_engine
from core.config import Settings, load_settings
from core.errors import InvalidRequest
from core.runs.context import RunContext


class SleepRequest(BaseModel):
    """Sleeps in steps, reporting progress and checking for cancellation each step."""

    kind: Literal["sleep"] = "sleep"
    steps: int = Field(5, ge=1, le=100_000)
    step_s: float = Field(0.01, ge=0, le=5)
    model: str | None = None


class ChattyRequest(BaseModel):
    """Emits many events quickly (to exercise streaming and slow consumers)."""

    kind: Literal["chatty"] = "chatty"
    events: int = Field(10, ge=0, le=100_000)
    size: int = Field(10, ge=0, le=1_000_000)
    delay_s: float = Field(0.0, ge=0, le=5)


class FailRequest(BaseModel):
    kind: Literal["fail"] = "fail"
    message: str = "boom"
    platform: bool = False  # raise a PlatformError (its code is kept) instead of a ValueError


SampleRequest = Annotated[SleepRequest | ChattyRequest | FailRequest, Field(discriminator="kind")]


class SampleResult(BaseModel):
    kind: str
    done: int
    attempt: int


def sleep_job(context: RunContext, request: SleepRequest) -> SampleResult:
    for step in range(request.steps):
        context.check_cancelled()
        time.sleep(request.step_s)
        context.progress((step + 1) / request.steps, f"step {step + 1}/{request.steps}")
        if step == 0:
            context.save_partial_result(SampleResult(kind="sleep", done=1, attempt=context.attempt))
    return SampleResult(kind="sleep", done=request.steps, attempt=context.attempt)


def chatty_job(context: RunContext, request: ChattyRequest) -> SampleResult:
    payload = "x" * request.size
    for index in range(request.events):
        context.check_cancelled()
        context.emit("log", {"level": "info", "message": payload, "index": index})
        if request.delay_s:
            time.sleep(request.delay_s)
    return SampleResult(kind="chatty", done=request.events, attempt=context.attempt)


def fail_job(context: RunContext, request: FailRequest) -> SampleResult:
    context.log("warning", "about to fail")
    if request.platform:
        raise InvalidRequest(request.message, code="sample_refused")
    raise ValueError(request.message)


SAMPLE = ComponentSpec(
    name="sample",
    requests=SampleRequest,
    result_model=SampleResult,
    jobs={"sleep": sleep_job, "chatty": chatty_job, "fail": fail_job},
)


def create_app(settings: Settings | None = None, **options: object) -> FastAPI:
    settings = settings or load_settings()
    return create_base_app(
        settings,
        components=[SAMPLE],
        engine_factory=no_engine,
        stop_grace_s=0.5,
        **options,  # type: ignore[arg-type]
    )
