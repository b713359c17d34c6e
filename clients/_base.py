"""Everything ``ApiClient`` and ``AsyncApiClient`` share that does no I/O.

Each public method of the two clients is one line: build a ``Call`` here (method, path,
query, body, headers, whether a retry is safe, how to parse the answer), then send it with
the client's own transport. URL building, auth headers, request bodies, idempotency keys,
retry decisions, error mapping and parsing all live here, once, so the twins cannot drift.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from clients._follow import EventCursor
from clients._results import parse_result
from clients._retry import RetryPolicy
from clients.errors import (
    MonitorTimeout,
    TransportError,
    error_code,
    error_from_response,
    parse_retry_after,
)
from clients.models import (
    ChatCompletion,
    Completion,
    Health,
    InteractiveEvent,
    ModelCard,
    ModelTemplate,
    RunPublic,
    RunResults,
    RunsPublic,
    SuiteInfo,
    Tokenized,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "HATCHERY_URL"
API_KEY_ENV = "HATCHERY_API_KEY"
USER_AGENT = "hatchery-client/0.1.0"

TEST, GENERATOR, BENCHMARK = "test", "generator", "benchmark"
COMPONENTS = (TEST, GENERATOR, BENCHMARK)

Prompts = str | Sequence[str]
Messages = str | Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class Call(Generic[T]):
    """One logical API call; every retry of it sends exactly the same request."""

    method: str
    path: str
    parse: Callable[[Any], T]
    params: dict[str, Any] | None = None
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    # Safe to send again after a connection broke mid-request (reads, keyed submissions).
    idempotent: bool = True
    # parse() receives the body bytes instead of decoded JSON.
    raw: bool = False

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"


class Deadline:
    """The time a monitor may still wait; ``timeout=None`` waits forever."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._end = None if timeout is None else time.monotonic() + timeout

    def sleep_for(self, interval: float) -> float:
        if self._end is None:
            return interval
        return max(0.0, min(interval, self._end - time.monotonic()))

    def check(self, run: RunPublic) -> None:
        if self._end is not None and time.monotonic() >= self._end:
            raise MonitorTimeout(
                f"run {run.id} is still {run.status.value} after {self.timeout:g} s",
                code="monitor_timeout",
            )


class BaseClient:
    """Configuration and request building shared by the sync and async clients.

    ``base_url`` defaults to ``$HATCHERY_URL`` (else http://127.0.0.1:8000) and ``api_key``
    to ``$HATCHERY_API_KEY``; the key is sent as ``Authorization: Bearer``. ``timeout``
    bounds each request (and each silence inside a stream), ``connect_timeout`` each
    connection attempt, ``ws_idle_timeout`` a silent WebSocket (the server pings every
    ≤20 s, so a longer silence means the connection is gone and is resumed).
    ``max_attempts`` (or a whole ``retry`` policy) bounds retries; ``typed_results=False``
    keeps results as dicts instead of importing the components' result models.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        ws_idle_timeout: float = 60.0,
        max_attempts: int = 4,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        typed_results: bool = True,
    ) -> None:
        base_url = base_url or os.environ.get(URL_ENV) or DEFAULT_URL
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url must be an http(s) URL, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        timeouts = {
            "timeout": timeout,
            "connect_timeout": connect_timeout,
            "ws_idle_timeout": ws_idle_timeout,
        }
        for name, value in timeouts.items():
            if value <= 0:
                raise ValueError(f"{name} must be positive")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.ws_idle_timeout = ws_idle_timeout
        self.retry = retry or RetryPolicy(max_attempts=max_attempts)
        self.extra_headers = dict(headers or {})
        self.typed_results = typed_results

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    # URLs and headers ---------------------------------------------------------------------

    def url(self, path: str) -> str:
        return self.base_url + path

    def ws_url(self, path: str, **query: Any) -> str:
        parts = urlsplit(self.url(path))
        scheme = "wss" if parts.scheme == "https" else "ws"
        params = urlencode({k: v for k, v in query.items() if v is not None})
        return urlunsplit((scheme, parts.netloc, parts.path, params, ""))

    def request_headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **self.extra_headers}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers | dict(extra or {})

    # Retry decisions and answers ------------------------------------------------------------

    def _status_retry_delay(
        self, call: Call[Any], attempt: int, status: int, content: bytes, headers: Any
    ) -> float | None:
        """Seconds to wait before sending ``call`` again, or None if this answer is final."""
        if status < 400 or not self.retry.can_retry(attempt):
            return None
        if not self.retry.retry_status(
            status, idempotent=call.idempotent, code=error_code(content) if status == 409 else None
        ):
            return None
        delay = self.retry.delay(attempt, parse_retry_after(headers.get("retry-after")))
        if delay is not None:
            logger.info("%s answered %d; retry %d in %.2f s", call.label, status, attempt, delay)
        return delay

    def _transport_retry_delay(
        self, call: Call[Any], attempt: int, error: BaseException, *, sent: bool
    ) -> float | None:
        if not self.retry.can_retry(attempt):
            return None
        if not self.retry.retry_transport(sent=sent, idempotent=call.idempotent):
            return None
        delay = self.retry.delay(attempt)
        logger.info("%s failed (%r); retry %d in %.2f s", call.label, error, attempt, delay or 0.0)
        return delay

    def _reconnect_delay(self, cursor: EventCursor) -> float:
        """Seconds to wait before resuming a followed run; raises once retries run out."""
        if not self.retry.can_retry(cursor.failures):
            raise TransportError(
                f"lost the event stream of run {cursor.run_id} after seq {cursor.last_seq} "
                f"({cursor.failures} failed connections in a row)"
            )
        return self.retry.delay(cursor.failures) or 0.0

    def _answer(self, call: Call[T], status: int, content: bytes, headers: Any) -> T:
        """The parsed answer, or the exception for an error status."""
        if status >= 400:
            raise error_from_response(status, content, headers)
        if call.raw:
            return call.parse(content)
        return call.parse(json.loads(content) if content else None)

    # Run convention calls -------------------------------------------------------------------

    def _submit_call(
        self, component: str, body: dict[str, Any], idempotency_key: str | None
    ) -> Call[RunPublic]:
        # One key per logical call, reused by every retry: the server then creates one run.
        key = idempotency_key or uuid.uuid4().hex
        return Call(
            "POST",
            f"/api/{component}/run",
            RunPublic.model_validate,
            json=body,
            headers={"Idempotency-Key": key},
        )

    def _status_call(self, component: str, run_id: str) -> Call[RunPublic]:
        return Call("GET", f"/api/{component}/status/{_segment(run_id)}", RunPublic.model_validate)

    def _results_call(self, component: str, run_id: str) -> Call[RunResults]:
        def parse(data: dict[str, Any]) -> RunResults:
            run = RunPublic.model_validate(data["run"])
            result = data.get("result")
            if self.typed_results:
                result = parse_result(component, run.kind, result)
            return RunResults(run=run, result=result)

        return Call("GET", f"/api/{component}/results/{_segment(run_id)}", parse)

    def _list_call(self, scope: str | None, /, **filters: Any) -> Call[RunsPublic]:
        """``scope``: one component's runs, or None for every run (``GET /api/runs``)."""
        path = f"/api/{scope}/runs" if scope else "/api/runs"
        return Call("GET", path, RunsPublic.model_validate, params=_query(filters))

    def _cancel_call(self, component: str, run_id: str) -> Call[RunPublic]:
        # Cancelling twice is harmless (a terminal run stays as it is): safe to retry.
        return Call("POST", f"/api/{component}/cancel/{_segment(run_id)}", RunPublic.model_validate)

    def _ws_path(self, component: str, run_id: str) -> str:
        return f"/api/{component}/ws/{_segment(run_id)}"

    # Component request bodies ---------------------------------------------------------------

    @staticmethod
    def _test_body(model: str | None, kind: str, options: Mapping[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": kind}
        if model is not None:
            body["model"] = model
        return body | dict(options)

    @staticmethod
    def _text_body(model: str | None, prompts: Prompts, params: Mapping[str, Any]) -> dict:
        listed = [prompts] if isinstance(prompts, str) else list(prompts)
        body: dict[str, Any] = {"kind": "text", "prompts": listed}
        if model is not None:
            body["model"] = model
        return body | dict(params)

    @staticmethod
    def _model_body(
        name: str,
        template: str,
        corpus: str | None,
        text: str | None,
        steps: int | None,
        training: Mapping[str, Any],
    ) -> dict[str, Any]:
        if corpus is not None and text is not None:
            raise ValueError("give a corpus name or inline text, not both")
        fields = {"corpus": corpus, "text": text, "steps": steps}
        body = {"kind": "model", "name": name, "template": template}
        return body | {k: v for k, v in fields.items() if v is not None} | dict(training)

    @staticmethod
    def _benchmark_body(kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"kind": kind} | dict(params)

    # Benchmark extras -------------------------------------------------------------------------

    def _plot_call(self, run_id: str, fmt: str) -> Call[bytes]:
        if fmt not in ("png", "svg"):
            raise ValueError("plot format must be 'png' or 'svg'")
        path = f"/api/benchmark/results/{_segment(run_id)}/plot.{fmt}"
        return Call("GET", path, bytes, raw=True)

    def _csv_call(self, run_id: str) -> Call[str]:
        path = f"/api/benchmark/results/{_segment(run_id)}.csv"
        return Call("GET", path, lambda content: bytes(content).decode("utf-8"), raw=True)

    def _compare_call(self, run_ids: Sequence[str]) -> Call[dict[str, Any]]:
        if not run_ids:
            raise ValueError("give at least one run id to compare")
        return Call("GET", "/api/benchmark/compare", dict, params={"ids": ",".join(run_ids)})

    # System and OpenAI-compatible calls --------------------------------------------------------

    def _health_call(self) -> Call[Health]:
        return Call("GET", "/health", Health.model_validate)

    def _info_call(self) -> Call[dict[str, Any]]:
        return Call("GET", "/info", dict)

    def _models_call(self) -> Call[list[ModelCard]]:
        def parse(data: dict[str, Any]) -> list[ModelCard]:
            return [ModelCard.model_validate(card) for card in data.get("data", [])]

        return Call("GET", "/v1/models", parse)

    def _completion_call(
        self, model: str, prompt: Any, params: Mapping[str, Any], *, stream: bool
    ) -> Call[Completion]:
        body = {"model": model, "prompt": prompt, **params, "stream": stream}
        # Not deduplicated by the server: only retried where it certainly did nothing.
        return Call(
            "POST", "/v1/completions", Completion.model_validate, json=body, idempotent=False
        )

    def _chat_call(
        self, model: str, messages: Messages, params: Mapping[str, Any], *, stream: bool
    ) -> Call[ChatCompletion]:
        body = {"model": model, "messages": _listed(messages), **params, "stream": stream}
        return Call(
            "POST",
            "/v1/chat/completions",
            ChatCompletion.model_validate,
            json=body,
            idempotent=False,
        )

    # Catalogues, tokenizer, interactive generation --------------------------------------------

    def _templates_call(self) -> Call[list[ModelTemplate]]:
        def parse(data: dict[str, Any]) -> list[ModelTemplate]:
            return [ModelTemplate.model_validate(entry) for entry in data.get("data", [])]

        return Call("GET", f"/api/{GENERATOR}/templates", parse)

    def _suites_call(self) -> Call[list[SuiteInfo]]:
        def parse(data: dict[str, Any]) -> list[SuiteInfo]:
            return [SuiteInfo.model_validate(entry) for entry in data.get("data", [])]

        return Call("GET", f"/api/{TEST}/suites", parse)

    def _tokenize_call(
        self,
        prompt: str | None,
        messages: Messages | None,
        model: str | None,
        options: Mapping[str, Any],
    ) -> Call[Tokenized]:
        body: dict[str, Any] = {**options}
        if messages is not None:
            body["messages"] = _listed(messages)
        else:
            body["prompt"] = prompt
        if model is not None:
            body["model"] = model
        return Call("POST", "/tokenize", Tokenized.model_validate, json=body)

    def _detokenize_call(self, tokens: Sequence[int], model: str | None) -> Call[str]:
        body: dict[str, Any] = {"tokens": list(tokens)}
        if model is not None:
            body["model"] = model
        return Call("POST", "/detokenize", lambda data: str(data["prompt"]), json=body)

    @staticmethod
    def _interactive_request(
        model: str, prompt: Any, messages: Messages | None, params: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The message ``WS /api/generator/stream`` takes: a completion or chat body."""
        request: dict[str, Any] = {"id": uuid.uuid4().hex, "model": model, **params}
        if messages is not None:
            request.update(type="chat", messages=_listed(messages))
        else:
            request["prompt"] = prompt
        return request

    @staticmethod
    def _interactive_event(raw: str | bytes) -> InteractiveEvent:
        """One server message; an ``error`` event raises what /v1 would have raised."""
        message = json.loads(raw)
        if message.get("type") == "error":
            body = json.dumps({"error": message.get("data") or {}}).encode()
            raise error_from_response(int(message.get("status") or 500), body, {})
        return InteractiveEvent.model_validate(message)


def _listed(messages: Messages) -> list[Any]:
    """Chat messages as a list of dicts; a plain string is one user message."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    return [dict(message) for message in messages]


def _segment(value: str) -> str:
    """A path segment: ids are quoted so that no value can reach another route."""
    if not value:
        raise ValueError("run id must not be empty")
    return quote(str(value), safe="")


def _query(filters: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _plain(value) for key, value in filters.items() if value is not None}


def _plain(value: Any) -> Any:
    enum_value = getattr(value, "value", None)
    return enum_value if isinstance(enum_value, str) else value
