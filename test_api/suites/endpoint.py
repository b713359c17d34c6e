"""Endpoint: conformance of an OpenAI-compatible API at ``base_url`` (default: this server).

Cases: ``models_list``, ``completion``, ``chat_completion``, ``completion_stream``,
``chat_stream`` (SSE format, one ``[DONE]``, the usage chunk), ``usage_counts`` (streamed and
whole answers agree), ``stop_string`` (a stop string taken from the greedy answer ends the
text before it, with finish_reason stop), ``finish_reason_length``, ``error_invalid_request``,
``error_unknown_model``, ``error_before_stream`` (bad input to a stream is a 4xx JSON error,
not a 200 stream). Requests are greedy (temperature 0) so answers can be compared.

The URL must pass the outbound allow-list; redirects are not followed. An endpoint that
cannot be reached at all fails the run (``endpoint_unreachable``).
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from core.api.outbound import allowed_hosts, check_url, default_base_url, peer_headers
from core.errors import PlatformError
from test_api.cases import Case, CaseFailed, CaseSkipped, Details, Plan, SuiteEnv, clip, expect
from test_api.schemas import EndpointRequest
from test_api.suites.openai_checks import (
    Completion,
    SseStream,
    check_chat,
    check_completion,
    check_error,
    check_stream,
    sse_payloads,
)

KIND = "endpoint"
REQUEST = EndpointRequest
DESCRIPTION = "Conformance of an OpenAI-compatible API (default: this server's /v1)."
CASE_NAMES = (
    "models_list",
    "completion",
    "chat_completion",
    "completion_stream",
    "chat_stream",
    "usage_counts",
    "stop_string",
    "finish_reason_length",
    "error_invalid_request",
    "error_unknown_model",
    "error_before_stream",
)
USER_AGENT = "hatchery-test-endpoint/0.1"


def plan(env: SuiteEnv, request: EndpointRequest) -> Plan:
    base_url = check_url(
        request.base_url or default_base_url(env.settings), allowed_hosts(env.settings)
    )
    client = httpx.Client(
        timeout=request.request_timeout_s,
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT, **peer_headers(env.settings, base_url)},
    )
    try:
        checks = _EndpointChecks(client, base_url, request, env)
    except BaseException:
        client.close()
        raise
    cases = [Case(name, getattr(checks, name)) for name in CASE_NAMES]
    return Plan(model=request.model, target={"base_url": base_url}, cases=cases, close=client.close)


class _EndpointChecks:
    def __init__(
        self, client: httpx.Client, base_url: str, request: EndpointRequest, env: SuiteEnv
    ) -> None:
        self.client, self.base_url, self.request, self.env = client, base_url, request, env
        self.model = request.model
        self.greedy: Completion | None = None
        try:
            self.models_response = self._send("GET", "/models")
        except httpx.TransportError as exc:
            raise PlatformError(
                f"cannot reach {base_url}: {type(exc).__name__}: {exc}",
                code="endpoint_unreachable",
            ) from None

    # HTTP ---------------------------------------------------------------------------------

    def _timeout(self) -> float:
        return max(0.05, min(self.request.request_timeout_s, self.env.watchdog.remaining()))

    def _send(self, method: str, path: str, body: Any = None) -> httpx.Response:
        self.env.watchdog.check()
        try:
            return self.client.request(
                method, self.base_url + path, json=body, timeout=self._timeout()
            )
        except httpx.TimeoutException:
            self.env.watchdog.check()  # the run's deadline, if that is what ran out
            raise

    def _stream(self, path: str, body: dict[str, Any]) -> SseStream:
        self.env.watchdog.check()
        url = self.base_url + path
        with self.client.stream("POST", url, json=body, timeout=self._timeout()) as response:
            content_type = response.headers.get("content-type", "")
            if response.status_code != 200 or not content_type.startswith("text/event-stream"):
                return SseStream(response.status_code, content_type, body=response.read())
            lines = []
            for line in response.iter_lines():
                self.env.watchdog.check()
                lines.append(line)
        payloads, strange = sse_payloads(lines)
        expect(not strange, "the stream has lines that are not SSE", lines=strange[:5])
        return SseStream(200, content_type, payloads)

    def _json(self, response: httpx.Response) -> Any:
        expect(
            response.status_code == 200, f"answered {response.status_code}", body=_text(response)
        )
        try:
            return response.json()
        except ValueError:
            raise CaseFailed("the body is not JSON", body=_text(response)) from None

    def _model(self) -> str:
        if self.model is None:
            raise CaseSkipped("no model to request: the models list gave none; give model")
        return self.model

    def _completion_body(self, **extra: Any) -> dict[str, Any]:
        body = {
            "model": self._model(),
            "prompt": self.request.prompt,
            "max_tokens": self.request.max_tokens,
            "temperature": 0.0,
        }
        return body | extra

    def _chat_body(self, **extra: Any) -> dict[str, Any]:
        body = {
            "model": self._model(),
            "messages": [{"role": "user", "content": self.request.prompt}],
            "max_tokens": self.request.max_tokens,
            "temperature": 0.0,
        }
        return body | extra

    # Cases --------------------------------------------------------------------------------

    def models_list(self) -> Details:
        body = self._json(self.models_response)
        expect(isinstance(body, dict) and body.get("object") == "list", "not a list", body=body)
        data = body.get("data")
        expect(isinstance(data, list) and len(data) > 0, "the models list is empty", body=body)
        bad = [m for m in data if not (isinstance(m, dict) and isinstance(m.get("id"), str))]
        expect(not bad, "a model entry has no id", entries=bad[:3])
        expect(all(m.get("object") == "model" for m in data), "an entry's object is not 'model'")
        ids = [m["id"] for m in data]
        if self.model is None:
            self.model = ids[0]
        expect(self.model in ids, f"model {self.model!r} is not listed", models=ids)
        return {"models": ids, "testing": self.model}

    def completion(self) -> Details:
        response = self._send("POST", "/completions", self._completion_body())
        self.greedy = check_completion(self._json(response), self.request.max_tokens)
        return {"text": clip(self.greedy.text), "finish_reason": self.greedy.finish_reason}

    def chat_completion(self) -> Details:
        response = self._send("POST", "/chat/completions", self._chat_body())
        answer = check_chat(self._json(response), self.request.max_tokens)
        return {"text": clip(answer.text), "finish_reason": answer.finish_reason}

    def completion_stream(self) -> Details:
        body = self._completion_body(stream=True, stream_options={"include_usage": True})
        streamed = check_stream(
            self._stream("/completions", body), "text_completion", False, self.request.max_tokens
        )
        return self._stream_details(streamed)

    def chat_stream(self) -> Details:
        body = self._chat_body(stream=True, stream_options={"include_usage": True})
        streamed = check_stream(
            self._stream("/chat/completions", body),
            "chat.completion.chunk",
            True,
            self.request.max_tokens,
        )
        return self._stream_details(streamed)

    def _stream_details(self, streamed: Completion) -> Details:
        details: Details = {"chunks": streamed.chunks, "text": clip(streamed.text)}
        return details | {"finish_reason": streamed.finish_reason, "usage": streamed.usage}

    def usage_counts(self) -> Details:
        whole = self._whole_greedy()
        body = self._completion_body(stream=True, stream_options={"include_usage": True})
        streamed = check_stream(
            self._stream("/completions", body), "text_completion", False, self.request.max_tokens
        )
        details = {"whole": whole.usage, "streamed": streamed.usage}
        expect(whole.usage == streamed.usage, "streamed and whole usage differ", **details)
        if whole.finish_reason == "length":
            tokens = whole.usage["completion_tokens"] if whole.usage else None
            expect(tokens == self.request.max_tokens, "length finish below max_tokens", **details)
        return details | {"same_text": whole.text == streamed.text}

    def _whole_greedy(self) -> Completion:
        if self.greedy is None:
            response = self._send("POST", "/completions", self._completion_body())
            self.greedy = check_completion(self._json(response), self.request.max_tokens)
        return self.greedy

    def stop_string(self) -> Details:
        text = self._whole_greedy().text
        stop = _stop_from(text)
        if stop is None:
            raise CaseSkipped("the greedy answer has no usable stop string", text=clip(text))
        expected = text[: text.find(stop)]
        response = self._send("POST", "/completions", self._completion_body(stop=[stop]))
        answer = check_completion(self._json(response), self.request.max_tokens)
        details = {"stop": stop, "text": answer.text, "expected": expected}
        expect(stop not in answer.text, "the stop string was returned", **details)
        expect(answer.finish_reason == "stop", "finish_reason is not 'stop'", **details)
        expect(
            answer.text == expected, "the text does not end where the stop string was", **details
        )
        return details

    def finish_reason_length(self) -> Details:
        limit = 2
        response = self._send("POST", "/completions", self._completion_body(max_tokens=limit))
        answer = check_completion(self._json(response), limit)
        tokens = answer.usage["completion_tokens"] if answer.usage else None
        details = {"finish_reason": answer.finish_reason, "completion_tokens": tokens}
        if answer.finish_reason == "stop" and tokens is not None and tokens < limit:
            raise CaseSkipped("the model ended on its own before max_tokens", **details)
        expect(answer.finish_reason == "length", "finish_reason is not 'length'", **details)
        expect(tokens == limit, "completion_tokens is not max_tokens", **details)
        return details

    def error_invalid_request(self) -> Details:
        details: Details = {}
        for label, extra in (
            ("max_tokens", {"max_tokens": -1}),
            ("temperature", {"temperature": "hot"}),
        ):
            response = self._send("POST", "/completions", self._completion_body(**extra))
            details[label] = check_error(response.status_code, response.content)
        return details

    def error_unknown_model(self) -> Details:
        body = self._completion_body(model=f"no-such-model-{uuid.uuid4().hex[:8]}")
        response = self._send("POST", "/completions", body)
        details = check_error(response.status_code, response.content)
        expect(response.status_code in (400, 404), "unknown model is not 400/404", **details)
        return details

    def error_before_stream(self) -> Details:
        body = self._completion_body(stream=True, max_tokens=-1)
        stream = self._stream("/completions", body)
        expect(not stream.payloads, "bad input started a stream", events=stream.payloads[:3])
        return check_error(stream.status, stream.body) | {"content_type": stream.content_type}


def _stop_from(text: str) -> str | None:
    """A short piece of ``text`` after its first character (from the middle on, preferably)
    with no replacement characters, to use as a stop string; None if there is none."""
    middle = max(1, len(text) // 2)
    starts = [*range(middle, len(text)), *range(1, middle)]
    for size in (2, 1):
        for start in starts:
            candidate = text[start : start + size]
            if len(candidate) == size and "\ufffd" not in candidate and candidate.strip():
                return candidate
    return None


def _text(response: httpx.Response) -> str:
    return clip(response.text, 300)
