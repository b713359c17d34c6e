"""What request validation may know of the server a request came in through.

Some checks of a run request need the server: limits from its settings
(``generation.max_batch``, the outbound allow-list, ...) and defaults such as "the server's
model" and "this server's /v1". The run convention validates the body before any hook of ours
runs, so ``SubmissionContextMiddleware`` (installed by ``core.api.app.create_base_app`` on
every server) puts the server's settings and its own root URL in a context variable for the
duration of each HTTP request; the request models read it with ``current_submission()`` while
they validate. Outside a request (the executor re-reading stored params) there is none, so the
models skip those checks and the job runs them instead, against its worker's settings.

Why a context variable and not an explicit argument (pydantic's validation ``context``):
FastAPI validates a body parameter itself, before any dependency or handler of ours runs, and
calls pydantic without a ``context`` (it has no hook to pass one). Handing the settings in
explicitly would mean taking every run route's body raw (POST run, the Generator's
``/api/generator/model`` alias) and re-creating by hand what FastAPI derives from the model:
its OpenAPI request schema and its 422 errors. The variable stays narrow instead: only
``SubmissionContextMiddleware`` sets it (``submitting`` in tests), for the span of one HTTP
request, resetting it after; each app's middleware carries that app's own settings, so two apps
in one process (the tests' servers) never see each other's; and only request-model validators
read it, through ``current_submission()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from core.api.outbound import openai_base_url, server_url_from_scope
from core.config import Settings


@dataclass(frozen=True)
class Submission:
    """The server a request came in through: its settings, its own root URL, and whether it
    serves the OpenAI routes (``/v1``) itself."""

    settings: Settings
    server_url: str | None
    serves_openai: bool = True

    def openai_base_url(self) -> str:
        """Where a run's OpenAI requests go by default; 422 ``no_openai_endpoint`` if nowhere."""
        return openai_base_url(self.settings, self.server_url, serves_openai=self.serves_openai)


_current: ContextVar[Submission | None] = ContextVar("hatchery_submission", default=None)


def current_submission() -> Submission | None:
    """The server of the request being validated; None outside requests."""
    return _current.get()


@contextmanager
def submitting(submission: Submission) -> Iterator[None]:
    """Validate as if inside a request to ``submission``'s server (the middleware; tests)."""
    token = _current.set(submission)
    try:
        yield
    finally:
        _current.reset(token)


class SubmissionContextMiddleware:
    """Pure ASGI, so the variable is set in the task that validates the body."""

    def __init__(self, app: ASGIApp, settings: Settings, serves_openai: bool = True) -> None:
        self.app = app
        self.settings = settings
        self.serves_openai = serves_openai

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        server_url = server_url_from_scope(scope)
        with submitting(Submission(self.settings, server_url, self.serves_openai)):
            await self.app(scope, receive, send)
