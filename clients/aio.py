"""``AsyncApiClient``: the asyncio client, on aiohttp (HTTP and WebSocket).

    async with AsyncApiClient("http://127.0.0.1:8000") as client:
        run = await client.run_test("bdh-shakespeare", "smoke")
        async for event in client.monitor_test_ws(run.id):
            print(event.type, event.data)

Method for method the twin of ``clients.sync.ApiClient``; all but the I/O is in ``clients._base``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import aiohttp

from clients._aio_streams import (
    TRANSPORT,
    WS_MAX_MESSAGE,
    interactive_events,
    socket_events,
    text_pieces,
    transport_error,
)
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
from clients._sse import AsyncStreamedText, TextStream
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

_NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


class AsyncApiClient(BaseClient):
    """Asyncio Hatchery client; see ``BaseClient`` for the options.

    The aiohttp session is opened on first use (inside the running loop) and closed by
    ``close()`` or ``async with``.
    """

    def __init__(self, base_url: str | None = None, **options: Any) -> None:
        super().__init__(base_url, **options)
        self._http: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.connect_timeout, sock_read=self.timeout
        )

    async def __aenter__(self) -> AsyncApiClient:
        self._session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                headers=self.request_headers(), timeout=self._timeout
            )
        return self._http

    # Test component -----------------------------------------------------------------------

    async def run_test(
        self, model: str | None, kind: str, *, idempotency_key: str | None = None, **options: Any
    ) -> RunPublic:
        """Start a test suite (``kind``: smoke, consistency, quality, prompts, endpoint)."""
        body = self._test_body(model, kind, options)
        return await self._send(self._submit_call(TEST, body, idempotency_key))

    async def get_test_status(self, run_id: str) -> RunPublic:
        return await self._send(self._status_call(TEST, run_id))

    async def get_test_results(self, run_id: str) -> RunResults:
        return await self._send(self._results_call(TEST, run_id))

    async def list_test_runs(
        self,
        status: RunStatus | str | None = None,
        kind: str | None = None,
        model: str | None = None,
        limit: int = 50,
        offset: int = 0,
        outcome: Literal["passed", "failed"] | None = None,
    ) -> RunsPublic:
        filters = {"status": status, "kind": kind, "model": model, "outcome": outcome}
        return await self._send(self._list_call(TEST, **filters, limit=limit, offset=offset))

    async def cancel_test(self, run_id: str) -> RunPublic:
        return await self._send(self._cancel_call(TEST, run_id))

    async def monitor_test(
        self,
        run_id: str,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        progress: bool = True,
    ) -> RunResults:
        """Poll until the run ends (a progress bar on a terminal); return its results."""
        return await self._monitor(TEST, run_id, poll_interval, timeout, progress)

    def monitor_test_ws(self, run_id: str, after: int = 0) -> AsyncIterator[RunEventPublic]:
        """Every event of the run over its WebSocket, resuming after drops, until it ends."""
        return self._follow(TEST, run_id, after)

    # Generator component --------------------------------------------------------------------

    async def generate_text(
        self,
        model: str | None,
        prompts: Prompts,
        *,
        idempotency_key: str | None = None,
        **params: Any,
    ) -> RunPublic:
        """Start a ``text`` run: each prompt completed with the sampling ``params``."""
        body = self._text_body(model, prompts, params)
        return await self._send(self._submit_call(GENERATOR, body, idempotency_key))

    async def generate_model(
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
        return await self._send(self._submit_call(GENERATOR, body, idempotency_key))

    async def get_generation_status(self, run_id: str) -> RunPublic:
        return await self._send(self._status_call(GENERATOR, run_id))

    async def get_generation_results(self, run_id: str) -> RunResults:
        return await self._send(self._results_call(GENERATOR, run_id))

    async def list_generation_runs(
        self,
        status: RunStatus | str | None = None,
        kind: str | None = None,
        model: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> RunsPublic:
        filters = {"status": status, "kind": kind, "model": model}
        return await self._send(self._list_call(GENERATOR, **filters, limit=limit, offset=offset))

    async def cancel_generation(self, run_id: str) -> RunPublic:
        return await self._send(self._cancel_call(GENERATOR, run_id))

    async def monitor_generation(
        self,
        run_id: str,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        progress: bool = True,
    ) -> RunResults:
        return await self._monitor(GENERATOR, run_id, poll_interval, timeout, progress)

    def monitor_generation_ws(self, run_id: str, after: int = 0) -> AsyncIterator[RunEventPublic]:
        return self._follow(GENERATOR, run_id, after)

    # Benchmark component --------------------------------------------------------------------

    async def run_benchmark(
        self, kind: str, *, idempotency_key: str | None = None, **params: Any
    ) -> RunPublic:
        """Start a benchmark (``kind``: engine or serving)."""
        body = self._benchmark_body(kind, params)
        return await self._send(self._submit_call(BENCHMARK, body, idempotency_key))

    async def get_benchmark_status(self, run_id: str) -> RunPublic:
        return await self._send(self._status_call(BENCHMARK, run_id))

    async def get_benchmark_results(self, run_id: str) -> RunResults:
        return await self._send(self._results_call(BENCHMARK, run_id))

    async def list_benchmark_runs(
        self,
        status: RunStatus | str | None = None,
        kind: str | None = None,
        model: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> RunsPublic:
        filters = {"status": status, "kind": kind, "model": model}
        return await self._send(self._list_call(BENCHMARK, **filters, limit=limit, offset=offset))

    async def cancel_benchmark(self, run_id: str) -> RunPublic:
        return await self._send(self._cancel_call(BENCHMARK, run_id))

    async def monitor_benchmark(
        self,
        run_id: str,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        progress: bool = True,
    ) -> RunResults:
        return await self._monitor(BENCHMARK, run_id, poll_interval, timeout, progress)

    def monitor_benchmark_ws(self, run_id: str, after: int = 0) -> AsyncIterator[RunEventPublic]:
        return self._follow(BENCHMARK, run_id, after)

    async def get_benchmark_plot(self, run_id: str, format: str = "png") -> bytes:
        """The results plot as PNG or SVG bytes."""
        return await self._send(self._plot_call(run_id, format))

    async def get_benchmark_csv(self, run_id: str) -> str:
        return await self._send(self._csv_call(run_id))

    async def compare_benchmarks(self, run_ids: Sequence[str]) -> dict[str, Any]:
        return await self._send(self._compare_call(run_ids))

    # All runs, system, OpenAI-compatible ----------------------------------------------------

    async def list_runs(
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
        return await self._send(self._list_call(None, **filters, limit=limit, offset=offset))

    async def health(self) -> Health:
        return await self._send(self._health_call())

    async def info(self) -> dict[str, Any]:
        """``/info``: versions, the default model, the models, components and features."""
        return await self._send(self._info_call())

    async def models(self) -> list[ModelCard]:
        return await self._send(self._models_call())

    @overload
    async def complete(
        self, model: str, prompt: Any, *, stream: Literal[False] = False, **params: Any
    ) -> Completion: ...

    @overload
    async def complete(
        self, model: str, prompt: Any, *, stream: Literal[True], **params: Any
    ) -> AsyncStreamedText: ...

    async def complete(
        self, model: str, prompt: Any, *, stream: bool = False, **params: Any
    ) -> Completion | AsyncStreamedText:
        """``/v1/completions``; ``stream=True`` gives an async iterator of text pieces."""
        call = self._completion_call(model, prompt, params, stream=stream)
        if stream:
            return await self._stream_text(call, chat=False)
        return await self._send(call)

    @overload
    async def chat(
        self, model: str, messages: Messages, *, stream: Literal[False] = False, **params: Any
    ) -> ChatCompletion: ...

    @overload
    async def chat(
        self, model: str, messages: Messages, *, stream: Literal[True], **params: Any
    ) -> AsyncStreamedText: ...

    async def chat(
        self, model: str, messages: Messages, *, stream: bool = False, **params: Any
    ) -> ChatCompletion | AsyncStreamedText:
        """``/v1/chat/completions``; ``stream=True`` gives an async iterator of text pieces."""
        call = self._chat_call(model, messages, params, stream=stream)
        if stream:
            return await self._stream_text(call, chat=True)
        return await self._send(call)

    async def tokenize(
        self,
        prompt: str | None = None,
        *,
        messages: Messages | None = None,
        model: str | None = None,
        **options: Any,
    ) -> Tokenized:
        """``/tokenize`` (vLLM's shape): a prompt, or chat messages through the template."""
        return await self._send(self._tokenize_call(prompt, messages, model, options))

    async def detokenize(self, tokens: Sequence[int], model: str | None = None) -> str:
        return await self._send(self._detokenize_call(tokens, model))

    # Catalogues and interactive generation ----------------------------------------------------

    async def templates(self) -> list[ModelTemplate]:
        """The Generator's model templates (architecture presets)."""
        return await self._send(self._templates_call())

    async def suites(self) -> list[SuiteInfo]:
        """The Test component's suites, with their cases and options."""
        return await self._send(self._suites_call())

    def generate_interactive_ws(
        self, model: str, prompt: Any = None, *, messages: Messages | None = None, **params: Any
    ) -> AsyncIterator[InteractiveEvent]:
        """One request over ``WS /api/generator/stream``: ``token`` events, then ``result``."""
        return interactive_events(
            self._session,
            self.ws_url(f"/api/{GENERATOR}/stream"),
            self._interactive_request(model, prompt, messages, params),
            self._interactive_event,
            headers=self.request_headers(),
            close_timeout=self.connect_timeout,
            idle_timeout=self.ws_idle_timeout,
        )

    # I/O ------------------------------------------------------------------------------------

    async def _send(self, call: Call[T]) -> T:
        response, content = await self._request(call, stream=False)
        return self._answer(call, response.status, content, response.headers)

    async def _request(
        self, call: Call[Any], *, stream: bool
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        """Send ``call`` with retries; an error status is raised, a good answer returned.

        Unless streaming, the body is read inside the retry loop, so a connection lost while
        reading it is retried like one lost before the answer.
        """
        session = self._session()
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await session.request(
                    call.method, self.url(call.path), params=call.params, json=call.json,
                    headers=call.headers,
                )  # fmt: skip
                if stream and response.status < 400:
                    return response, b""
                content = await response.read()
                response.release()
            except TRANSPORT as exc:
                sent = not isinstance(exc, _NOT_SENT)
                delay = self._transport_retry_delay(call, attempt, exc, sent=sent)
                if delay is None:
                    raise transport_error(call.label, exc) from exc
                await asyncio.sleep(delay)
                continue
            status, headers = response.status, response.headers
            if status < 400:
                return response, content
            delay = self._status_retry_delay(call, attempt, status, content, headers)
            if delay is None:
                raise error_from_response(status, content, headers, reason=response.reason or "")
            await asyncio.sleep(delay)

    async def _stream_text(self, call: Call[Any], *, chat: bool) -> AsyncStreamedText:
        # Opened now, so that a refused request raises here, before iteration starts.
        response, _ = await self._request(call, stream=True)
        text = TextStream(chat=chat)
        return AsyncStreamedText(text_pieces(response, call.label, text), text)

    async def _monitor(
        self, component: str, run_id: str, poll_interval: float, timeout: float | None, show: bool
    ) -> RunResults:
        deadline = Deadline(timeout)
        label = f"{component} {run_id[:8]}"
        with RunProgress(label, enabled=show and on_terminal()) as bar:
            while True:
                run = await self._send(self._status_call(component, run_id))
                bar.update(run)
                if run.status.is_terminal:
                    break
                deadline.check(run)
                await asyncio.sleep(deadline.sleep_for(poll_interval))
        return await self._send(self._results_call(component, run_id))

    async def _follow(
        self, component: str, run_id: str, after: int
    ) -> AsyncIterator[RunEventPublic]:
        cursor = EventCursor(run_id, after=after)
        path = self._ws_path(component, run_id)
        timeout = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self.connect_timeout)
        while not cursor.finished:
            url = self.ws_url(path, after=cursor.last_seq or None)
            try:
                async with self._session().ws_connect(
                    url,
                    headers=self.request_headers(),
                    timeout=timeout,
                    max_msg_size=WS_MAX_MESSAGE,
                ) as socket:
                    async for event in socket_events(socket, cursor, self.ws_idle_timeout):
                        yield event
            except aiohttp.WSServerHandshakeError as exc:
                raise ws_handshake_error(exc.status, b"", exc.headers or {}, url) from exc
            except (*TRANSPORT, OSError) as exc:
                cursor.broken(exc)
            if not cursor.finished:
                await asyncio.sleep(self._reconnect_delay(cursor))
