"""``ApiClient``: the synchronous client, on httpx (HTTP) and websockets (WebSocket).

    with ApiClient("http://127.0.0.1:8000", api_key="...") as client:
        run = client.run_test("bdh-shakespeare", "smoke")
        report = client.monitor_test(run.id).result

Method for method the twin of ``clients.aio.AsyncApiClient``; everything but the I/O is in
``clients._base``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import connect as ws_connect

from clients._base import (
    BENCHMARK,
    GENERATOR,
    TEST,
    BaseClient,
    Call,
    Deadline,
    Messages,
    Prompts,
)
from clients._follow import EventCursor
from clients._progress import RunProgress, on_terminal
from clients._sse import StreamedText, TextStream
from clients._sync_streams import (
    WS_MAX_MESSAGE,
    interactive_events,
    text_pieces,
    transport_error,
)
from clients.errors import error_from_response, ws_handshake_error
from clients.models import (
    ChatCompletion,
    Completion,
    Health,
    InteractiveEvent,
    ModelCard,
    ModelTemplate,
    RunEventPublic,
    RunPublic,
    RunResults,
    RunsPublic,
    RunStatus,
    SuiteInfo,
    Tokenized,
)

T = TypeVar("T")

_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class ApiClient(BaseClient):
    """Synchronous Hatchery client; see ``BaseClient`` for the options."""

    def __init__(self, base_url: str | None = None, **options: Any) -> None:
        super().__init__(base_url, **options)
        self._http = httpx.Client(
            timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout),
            headers=self.request_headers(),
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # Test component -----------------------------------------------------------------------

    def run_test(
        self, model: str | None, kind: str, *, idempotency_key: str | None = None, **options: Any
    ) -> RunPublic:
        """Start a test suite (``kind``: smoke, consistency, quality, prompts, endpoint)."""
        body = self._test_body(model, kind, options)
        return self._send(self._submit_call(TEST, body, idempotency_key))

    def get_test_status(self, run_id: str) -> RunPublic:
        return self._send(self._status_call(TEST, run_id))

    def get_test_results(self, run_id: str) -> RunResults:
        return self._send(self._results_call(TEST, run_id))

    def list_test_runs(
        self,
        status: RunStatus | str | None = None,
        kind: str | None = None,
        model: str | None = None,
        limit: int = 50,
        offset: int = 0,
        outcome: Literal["passed", "failed"] | None = None,
    ) -> RunsPublic:
        filters = {"status": status, "kind": kind, "model": model, "outcome": outcome}
        return self._send(self._list_call(TEST, **filters, limit=limit, offset=offset))

    def cancel_test(self, run_id: str) -> RunPublic:
        return self._send(self._cancel_call(TEST, run_id))

    def monitor_test(
        self,
        run_id: str,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        progress: bool = True,
    ) -> RunResults:
        """Poll until the run ends (a progress bar on a terminal); return its results."""
        return self._monitor(TEST, run_id, poll_interval, timeout, progress)

    def monitor_test_ws(self, run_id: str, after: int = 0) -> Iterator[RunEventPublic]:
        """Every event of the run over its WebSocket, resuming after drops, until it ends."""
        return self._follow(TEST, run_id, after)

    # Generator component --------------------------------------------------------------------

    def generate_text(
        self,
        model: str | None,
        prompts: Prompts,
        *,
        idempotency_key: str | None = None,
        **params: Any,
    ) -> RunPublic:
        """Start a ``text`` run: each prompt completed with the sampling ``params``."""
        body = self._text_body(model, prompts, params)
        return self._send(self._submit_call(GENERATOR, body, idempotency_key))

    def generate_model(
        self,
        name: str,
        template: str,
        corpus: str | None = None,
        text: str | None = None,
        steps: int | None = None,
        *,
        idempotency_key: str | None = None,
        **training: Any,
    ) -> RunPublic:
        """Start a ``model`` run: create ``name`` from ``template``, trained on a corpus/text."""
        body = self._model_body(name, template, corpus, text, steps, training)
        return self._send(self._submit_call(GENERATOR, body, idempotency_key))

    def get_generation_status(self, run_id: str) -> RunPublic:
        return self._send(self._status_call(GENERATOR, run_id))

    def get_generation_results(self, run_id: str) -> RunResults:
        return self._send(self._results_call(GENERATOR, run_id))

    def list_generation_runs(
        self,
        status: RunStatus | str | None = None,
        kind: str | None = None,
        model: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> RunsPublic:
        filters = {"status": status, "kind": kind, "model": model}
        return self._send(self._list_call(GENERATOR, **filters, limit=limit, offset=offset))

    def cancel_generation(self, run_id: str) -> RunPublic:
        return self._send(self._cancel_call(GENERATOR, run_id))

    def monitor_generation(
        self,
        run_id: str,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        progress: bool = True,
    ) -> RunResults:
        return self._monitor(GENERATOR, run_id, poll_interval, timeout, progress)

    def monitor_generation_ws(self, run_id: str, after: int = 0) -> Iterator[RunEventPublic]:
        return self._follow(GENERATOR, run_id, after)

    # Benchmark component --------------------------------------------------------------------

    def run_benchmark(
        self, kind: str, *, idempotency_key: str | None = None, **params: Any
    ) -> RunPublic:
        """Start a benchmark (``kind``: engine or serving)."""
        body = self._benchmark_body(kind, params)
        return self._send(self._submit_call(BENCHMARK, body, idempotency_key))

    def get_benchmark_status(self, run_id: str) -> RunPublic:
        return self._send(self._status_call(BENCHMARK, run_id))

    def get_benchmark_results(self, run_id: str) -> RunResults:
        return self._send(self._results_call(BENCHMARK, run_id))

    def list_benchmark_runs(
        self,
        status: RunStatus | str | None = None,
        kind: str | None = None,
        model: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> RunsPublic:
        filters = {"status": status, "kind": kind, "model": model}
        return self._send(self._list_call(BENCHMARK, **filters, limit=limit, offset=offset))

    def cancel_benchmark(self, run_id: str) -> RunPublic:
        return self._send(self._cancel_call(BENCHMARK, run_id))

    def monitor_benchmark(
        self,
        run_id: str,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        progress: bool = True,
    ) -> RunResults:
        return self._monitor(BENCHMARK, run_id, poll_interval, timeout, progress)

    def monitor_benchmark_ws(self, run_id: str, after: int = 0) -> Iterator[RunEventPublic]:
        return self._follow(BENCHMARK, run_id, after)

    def get_benchmark_plot(self, run_id: str, format: str = "png") -> bytes:
        """The results plot as PNG or SVG bytes."""
        return self._send(self._plot_call(run_id, format))

    def get_benchmark_csv(self, run_id: str) -> str:
        return self._send(self._csv_call(run_id))

    def compare_benchmarks(self, run_ids: Sequence[str]) -> dict[str, Any]:
        return self._send(self._compare_call(run_ids))

    # All runs, system, OpenAI-compatible ----------------------------------------------------

    def list_runs(
        self,
        component: str | None = None,
        status: RunStatus | str | None = None,
        kind: str | None = None,
        model: str | None = None,
        limit: int = 50,
        offset: int = 0,
        outcome: Literal["passed", "failed"] | None = None,
    ) -> RunsPublic:
        """Runs of every component (unified server), newest first."""
        filters = dict(component=component, status=status, kind=kind, model=model, outcome=outcome)
        return self._send(self._list_call(None, **filters, limit=limit, offset=offset))

    def health(self) -> Health:
        return self._send(self._health_call())

    def info(self) -> dict[str, Any]:
        """``/info``: versions, the default model, the models, components and features."""
        return self._send(self._info_call())

    def models(self) -> list[ModelCard]:
        return self._send(self._models_call())

    @overload
    def complete(
        self, model: str, prompt: Any, *, stream: Literal[False] = False, **params: Any
    ) -> Completion: ...

    @overload
    def complete(
        self, model: str, prompt: Any, *, stream: Literal[True], **params: Any
    ) -> StreamedText: ...

    def complete(
        self, model: str, prompt: Any, *, stream: bool = False, **params: Any
    ) -> Completion | StreamedText:
        """``/v1/completions``; ``stream=True`` yields the text as it is generated."""
        call = self._completion_call(model, prompt, params, stream=stream)
        if stream:
            return self._stream_text(call, chat=False)
        return self._send(call)

    @overload
    def chat(
        self, model: str, messages: Messages, *, stream: Literal[False] = False, **params: Any
    ) -> ChatCompletion: ...

    @overload
    def chat(
        self, model: str, messages: Messages, *, stream: Literal[True], **params: Any
    ) -> StreamedText: ...

    def chat(
        self, model: str, messages: Messages, *, stream: bool = False, **params: Any
    ) -> ChatCompletion | StreamedText:
        """``/v1/chat/completions``; ``stream=True`` yields the reply as it is generated."""
        call = self._chat_call(model, messages, params, stream=stream)
        if stream:
            return self._stream_text(call, chat=True)
        return self._send(call)

    def tokenize(
        self,
        prompt: str | None = None,
        *,
        messages: Messages | None = None,
        model: str | None = None,
        **options: Any,
    ) -> Tokenized:
        """``/tokenize`` (vLLM's shape): a prompt, or chat messages through the template."""
        return self._send(self._tokenize_call(prompt, messages, model, options))

    def detokenize(self, tokens: Sequence[int], model: str | None = None) -> str:
        return self._send(self._detokenize_call(tokens, model))

    # Catalogues and interactive generation ----------------------------------------------------

    def templates(self) -> list[ModelTemplate]:
        """The Generator's model templates (architecture presets)."""
        return self._send(self._templates_call())

    def suites(self) -> list[SuiteInfo]:
        """The Test component's suites, with their cases and options."""
        return self._send(self._suites_call())

    def generate_interactive_ws(
        self, model: str, prompt: Any = None, *, messages: Messages | None = None, **params: Any
    ) -> Iterator[InteractiveEvent]:
        """One request over ``WS /api/generator/stream``: ``token`` events, then ``result``."""
        return interactive_events(
            self.ws_url(f"/api/{GENERATOR}/stream"),
            self._interactive_request(model, prompt, messages, params),
            self._interactive_event,
            headers=self.request_headers(),
            open_timeout=self.connect_timeout,
            idle_timeout=self.ws_idle_timeout,
        )

    # I/O ------------------------------------------------------------------------------------

    def _send(self, call: Call[T]) -> T:
        response = self._request(call, stream=False)
        return self._answer(call, response.status_code, response.content, response.headers)

    def _request(self, call: Call[Any], *, stream: bool) -> httpx.Response:
        """Send ``call`` with retries; an error status is raised, a good answer returned."""
        attempt = 0
        while True:
            attempt += 1
            request = self._http.build_request(
                call.method, self.url(call.path), params=call.params, json=call.json,
                headers=call.headers,
            )  # fmt: skip
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                sent = not isinstance(exc, _NOT_SENT)
                delay = self._transport_retry_delay(call, attempt, exc, sent=sent)
                if delay is None:
                    raise transport_error(call.label, exc) from exc
                time.sleep(delay)
                continue
            if response.status_code < 400:
                return response
            content = response.read()
            response.close()
            status, headers = response.status_code, response.headers
            delay = self._status_retry_delay(call, attempt, status, content, headers)
            if delay is None:
                raise error_from_response(status, content, headers)
            time.sleep(delay)

    def _stream_text(self, call: Call[Any], *, chat: bool) -> StreamedText:
        # Opened now, so that a refused request raises here, before iteration starts.
        response = self._request(call, stream=True)
        text = TextStream(chat=chat)
        return StreamedText(text_pieces(response, call.label, text), text)

    def _monitor(
        self, component: str, run_id: str, poll_interval: float, timeout: float | None, show: bool
    ) -> RunResults:
        deadline = Deadline(timeout)
        label = f"{component} {run_id[:8]}"
        with RunProgress(label, enabled=show and on_terminal()) as bar:
            while True:
                run = self._send(self._status_call(component, run_id))
                bar.update(run)
                if run.status.is_terminal:
                    break
                deadline.check(run)
                time.sleep(deadline.sleep_for(poll_interval))
        return self._send(self._results_call(component, run_id))

    def _follow(self, component: str, run_id: str, after: int) -> Iterator[RunEventPublic]:
        cursor = EventCursor(run_id, after=after)
        path = self._ws_path(component, run_id)
        while not cursor.finished:
            url = self.ws_url(path, after=cursor.last_seq or None)
            try:
                with ws_connect(
                    url,
                    additional_headers=self.request_headers(),
                    open_timeout=self.connect_timeout,
                    close_timeout=self.connect_timeout,
                    max_size=WS_MAX_MESSAGE,
                ) as socket:
                    cursor.connected()
                    while not cursor.finished:
                        event = cursor.accept(socket.recv(timeout=self.ws_idle_timeout))
                        if event is not None:
                            yield event
            except ConnectionClosed as exc:
                frame = exc.rcvd
                cursor.closed(frame.code if frame else None, frame.reason if frame else "")
            except InvalidStatus as exc:
                answer = exc.response
                body = bytes(answer.body or b"")
                raise ws_handshake_error(answer.status_code, body, answer.headers, url) from exc
            except (OSError, InvalidHandshake) as exc:  # refused, reset, silent (TimeoutError)
                cursor.broken(exc)
            if not cursor.finished:
                time.sleep(self._reconnect_delay(cursor))
