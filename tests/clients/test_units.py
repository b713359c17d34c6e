"""Pure logic of the client base: error mapping, retry policy, SSE, event cursor, URLs."""

from __future__ import annotations

import io
import json
import random
from datetime import UTC, datetime
from typing import Any

import pytest
from rich.console import Console

from clients import (
    ApiClient,
    Conflict,
    HatcheryError,
    NotFound,
    RateLimited,
    RetryPolicy,
    RunTranscript,
    ServerError,
    Unauthorized,
    ValidationFailed,
)
from clients._follow import EventCursor
from clients._progress import RunProgress
from clients._render import event_line
from clients._sse import SSEDecoder, TextStream
from clients.errors import error_from_response, parse_retry_after
from core.store.models import Run, RunEventPublic, RunPublic

BODY = b'{"error": {"message": "m", "type": "t", "param": "p", "code": "c"}}'


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, ValidationFailed),
        (401, Unauthorized),
        (403, Unauthorized),
        (404, NotFound),
        (409, Conflict),
        (413, ValidationFailed),
        (422, ValidationFailed),
        (429, RateLimited),
        (500, ServerError),
        (503, ServerError),
        (418, HatcheryError),
    ],
)
def test_error_classes(status: int, cls: type[HatcheryError]) -> None:
    error = error_from_response(status, BODY, {"retry-after": "3"})
    assert type(error) is cls and error.status_code == status
    assert (error.message, error.code, error.param, error.type) == ("m", "c", "p", "t")
    assert error.retry_after == 3.0 and str(error) == f"{status} m [c]"


def test_error_from_a_body_of_another_shape() -> None:
    error = error_from_response(502, b"<html>Bad Gateway</html>", {}, reason="Bad Gateway")
    assert isinstance(error, ServerError) and error.code is None
    assert error.message == "<html>Bad Gateway</html>" and error.retry_after is None
    empty = error_from_response(404, b"", {}, reason="Not Found")
    assert isinstance(empty, NotFound) and empty.message == "Not Found"


def test_retry_after_forms() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("0") == 0.0 and parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after("Wed, 01 Jan 2025 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Wed, 01 Jan 2025 11:00:00 GMT", now=now) == 0.0  # in the past
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert parse_retry_after("-4") == 0.0 and parse_retry_after("nan") is None


def test_retry_policy_decisions() -> None:
    policy = RetryPolicy(max_attempts=3, backoff_base_s=1.0, backoff_max_s=3.0)
    assert policy.can_retry(1) and policy.can_retry(2) and not policy.can_retry(3)
    for idempotent in (True, False):
        assert policy.retry_status(503, idempotent=idempotent)
        assert policy.retry_status(429, idempotent=idempotent)
        assert policy.retry_transport(sent=False, idempotent=idempotent)
    assert policy.retry_status(502, idempotent=True)
    assert not policy.retry_status(502, idempotent=False)
    assert not policy.retry_status(500, idempotent=True)
    assert policy.retry_status(409, idempotent=True, code="idempotency_key_in_use")
    assert not policy.retry_status(409, idempotent=True, code="run_not_finished")
    assert not policy.retry_transport(sent=True, idempotent=False)
    assert policy.delay(1, retry_after=2.0) == 2.0
    assert RetryPolicy(max_retry_after_s=1).delay(1, retry_after=2.0) is None
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_backoff_is_jittered_and_capped() -> None:
    policy = RetryPolicy(backoff_base_s=0.5, backoff_max_s=2.0, rng=random.Random(7))
    for attempt, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (10, 2.0)):
        delays = [policy.delay(attempt) for _ in range(50)]
        assert all(d is not None and 0.0 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jitter: not all clients come back at once


def test_sse_decoder_and_text_stream() -> None:
    decoder, text = SSEDecoder(), TextStream(chat=True)
    lines = [
        ": keep-alive",
        'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}',
        "",
        'data: {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}',
        "",
        'data: {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]}',
        "",
        'data: {"choices": [], "usage": {"total_tokens": 3}}',
        "",
        "data: [DONE]",
        "",
    ]
    pieces = []
    for line in lines:
        payload = decoder.feed(line)
        if payload is not None:
            pieces += text.pieces(payload)
    assert pieces == ["Hel", "lo"] and text.done
    assert text.usage == {"total_tokens": 3} and text.finish_reasons == {0: "stop"}

    multi = SSEDecoder()
    assert multi.feed("data: a") is None and multi.feed("data: b") is None
    assert multi.feed("") == "a\nb" and multi.close() is None


def test_errors_inside_a_stream_are_raised() -> None:
    chunk = json.dumps({"error": {"message": "engine stopped", "code": "overloaded"}})
    with pytest.raises(HatcheryError) as caught:
        TextStream(chat=False).pieces(chunk)
    assert caught.value.code == "overloaded"


def event(seq: int, type_: str = "log", **data: object) -> str:
    return json.dumps(
        {"seq": seq, "run_id": "r", "type": type_, "ts": "2025-01-01T00:00:00Z", "data": data}
    )


def test_event_cursor_resumes_without_duplicates() -> None:
    cursor = EventCursor("r")
    assert cursor.accept(event(1)) is not None and cursor.accept(event(2)) is not None
    assert cursor.accept('{"type": "ping"}') is None
    cursor.closed(1006)  # dropped: reconnect from seq 2
    assert not cursor.finished and cursor.failures == 1 and cursor.last_seq == 2
    assert cursor.accept(event(1)) is None and cursor.accept(event(2)) is None  # replayed
    third = cursor.accept(event(3, "status", status="succeeded"))
    assert third is not None and third.seq == 3 and cursor.finished and cursor.failures == 0


def test_event_cursor_close_codes() -> None:
    with pytest.raises(NotFound):
        EventCursor("r").closed(4404)
    with pytest.raises(Unauthorized):
        EventCursor("r").closed(4401)
    with pytest.raises(HatcheryError):
        EventCursor("r").accept('{"type": "error", "error": {"message": "bad", "code": "x"}}')
    normal = EventCursor("r", after=5)
    normal.closed(1000)
    assert normal.finished and normal.last_seq == 5


def test_urls_and_headers() -> None:
    with ApiClient("https://example.test/prefix/", api_key="k", typed_results=False) as client:
        assert client.url("/api/test/runs") == "https://example.test/prefix/api/test/runs"
        ws = client.ws_url("/api/test/ws/abc", after=7)
        assert ws == "wss://example.test/prefix/api/test/ws/abc?after=7"
        assert client.request_headers()["Authorization"] == "Bearer k"
        status = client._status_call("test", "a/../b")
        assert status.path == "/api/test/status/a%2F..%2Fb"  # ids cannot reach other routes
        first = client._submit_call("test", {"kind": "smoke"}, None)
        second = client._submit_call("test", {"kind": "smoke"}, None)
        assert first.headers["Idempotency-Key"] != second.headers["Idempotency-Key"]
        assert not client._completion_call("m", "p", {}, stream=False).idempotent
    for bad in ("ftp://x", "127.0.0.1:8000", ""):
        with pytest.raises(ValueError):
            ApiClient(bad or "nohost://").close()
    with pytest.raises(ValueError):
        ApiClient("http://x", timeout=0).close()


def test_request_bodies() -> None:
    with ApiClient("http://x") as client:
        assert client._text_body("m", "hi", {"seed": 1}) == {
            "kind": "text",
            "prompts": ["hi"],
            "model": "m",
            "seed": 1,
        }
        body = client._model_body("n", "bdh-nano", None, "txt", 3, {"batch_size": 2})
        assert body == {
            "kind": "model",
            "name": "n",
            "template": "bdh-nano",
            "text": "txt",
            "steps": 3,
            "batch_size": 2,
        }
        with pytest.raises(ValueError):
            client._model_body("n", "bdh-nano", "shakespeare", "txt", None, {})
        assert client._test_body(None, "smoke", {}) == {"kind": "smoke"}
        assert client._chat_call("m", "hi", {}, stream=True).json["messages"] == [
            {"role": "user", "content": "hi"}
        ]


def test_progress_bar_only_where_it_can_be_seen() -> None:
    run = RunPublic.from_run(
        Run(component="test", kind="smoke", status="running", progress=0.5, message="case 2/4")
    )
    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=120)
    with RunProgress("test 1234", enabled=True, console=terminal) as bar:
        bar.update(run)
    shown = screen.getvalue()
    assert "test 1234" in shown and "50%" in shown and "running" in shown and "case 2/4" in shown

    quiet = io.StringIO()
    with RunProgress("test 1234", enabled=False, console=Console(file=quiet)) as bar:
        bar.update(run)
    assert quiet.getvalue() == ""


def _event(seq: int, type: str, data: dict[str, Any], attempt: int = 1) -> RunEventPublic:
    return RunEventPublic(
        seq=seq, run_id="r", attempt=attempt, type=type, ts=datetime.now(UTC), data=data
    )


def test_transcript_starts_over_at_an_attempt_event() -> None:
    transcript = RunTranscript()
    stream = [
        _event(1, "status", {"status": "running"}),
        _event(2, "token", {"prompt_index": 0, "choice": 0, "text": "Once"}),
        _event(3, "metric", {"name": "loss", "value": 3.0, "step": 1}),
        _event(4, "status", {"status": "queued", "reason": "worker_lost"}),
        _event(5, "attempt", {"attempt": 2, "reason": "worker_lost"}, attempt=2),
        _event(6, "token", {"prompt_index": 0, "choice": 0, "text": "Once"}, attempt=2),
        _event(7, "token", {"prompt_index": 0, "choice": 0, "text": " upon"}, attempt=2),
        _event(8, "metric", {"name": "loss", "value": 2.5, "step": 1}, attempt=2),
    ]
    restarted = [transcript.feed(event) for event in stream]
    assert restarted == [False, False, False, False, True, False, False, False]
    assert transcript.text() == "Once upon"
    assert transcript.metrics == {"loss": [(1, 2.5)]}
    assert transcript.attempt == 2
    assert transcript.restarts == [{"attempt": 2, "reason": "worker_lost"}]


def test_transcript_resumed_past_the_marker_still_drops_the_old_attempt() -> None:
    transcript = RunTranscript()
    transcript.feed(_event(2, "token", {"choice": 0, "text": "old"}))
    transcript.feed(_event(9, "token", {"choice": 0, "text": "new"}, attempt=2))
    assert (transcript.text(), transcript.attempt) == ("new", 2)


def test_the_progress_bar_and_the_event_lines_start_over_at_an_attempt_event() -> None:
    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=120)
    with RunProgress("generator 1234", enabled=True, console=terminal) as bar:
        bar.event(_event(3, "progress", {"progress": 0.75, "message": "step 3/4"}))
        bar.event(_event(5, "attempt", {"attempt": 2, "reason": "worker_lost"}, attempt=2))
    final = screen.getvalue().rsplit("\r", 1)[-1]  # the bar as last drawn
    assert "0%" in final and "attempt 2" in final and "75%" not in final
    line = event_line(_event(5, "attempt", {"attempt": 2, "reason": "worker_lost"}, attempt=2))
    assert line is not None and "attempt 2" in line and "worker_lost" in line


def test_wide_result_tables_continue_below_at_80_columns() -> None:
    from clients._render import _engine_rows

    row = {
        "mode": "recurrent", "batch_size": 16, "context": 4096, "new_tokens": 256,
        "dtype": "float32", "status": "ok", "prefill_tokens_per_s": 123456.7, "ttft_ms": 12.5,
        "tpot_ms": 3.25, "decode_tokens_per_s": 98765.4, "peak_memory_mb": 1234.5,
        "roofline_fraction": 0.4567,
    }  # fmt: skip
    screen = io.StringIO()
    _engine_rows(Console(file=screen, width=80), {"model": "m", "rows": [row]})
    text = screen.getvalue()
    assert all(len(line) <= 80 for line in text.splitlines()) and "…" not in text
    for header in ("batch", "prefill/s", "TTFT", "decode/s", "roof"):
        assert header in text
    assert text.count("recurrent") == 2  # the lead column starts the continuation table


def test_a_test_runs_last_status_event_shows_its_outcome() -> None:
    ended = event_line(_event(9, "status", {"status": "succeeded", "outcome": "failed"}))
    assert ended is not None and "outcome" in ended and "failed" in ended
    assert event_line(_event(9, "status", {"status": "succeeded"})) is None  # not a test run
