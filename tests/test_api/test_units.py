"""Pure logic of the Test component: URL allow-list, case outcomes, checks and statistics."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from core.api.outbound import UrlNotAllowed, check_url, root_url
from core.errors import RunCancelled
from test_api.cases import Case, CaseFailed, CaseSkipped, SuiteTimeout, Watchdog, jsonable, run_case
from test_api.schemas import CaseStatus, EndpointRequest, Expectation, SmokeRequest, TestReport
from test_api.suites import SUITES, prompts
from test_api.suites.numerics import Tolerance, compare, tolerance_for
from test_api.suites.openai_checks import SseStream, check_error, check_stream, sse_payloads
from test_api.suites.quality import invalid_utf8_bytes, repetition_rate, unigram_entropy

LOOPBACK = ["127.0.0.1", "localhost", "::1"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1"),
        ("https://LOCALHOST/v1", "https://LOCALHOST/v1"),
        ("http://[::1]:9000/v1", "http://[::1]:9000/v1"),
        ("http://localhost.:8000", "http://localhost.:8000"),
    ],
)
def test_allowed_urls(url: str, expected: str) -> None:
    assert check_url(url, LOOPBACK) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost.example.com/v1",
        "http://127.0.0.2/v1",
        "http://user@10.1.1.1/v1",
        "file:///etc/passwd",
        "http://127.0.0.1/v1?x=1",
        "http://127.0.0.1:0x50/",
        "//127.0.0.1/v1",
    ],
)
def test_refused_urls(url: str) -> None:
    with pytest.raises(UrlNotAllowed) as refused:
        check_url(url, LOOPBACK)
    assert refused.value.code == "url_not_allowed" and refused.value.status_code == 400


def test_wildcard_allows_any_host_but_not_any_scheme() -> None:
    assert check_url("https://api.example.com/v1", ["*"]) == "https://api.example.com/v1"
    with pytest.raises(UrlNotAllowed):
        check_url("gopher://api.example.com/", ["*"])


def test_root_url_reaches_a_wildcard_bind_on_loopback() -> None:
    assert root_url("http", "0.0.0.0", 8000) == "http://127.0.0.1:8000"
    assert root_url("http", "::", 8000) == "http://127.0.0.1:8000"
    assert root_url("https", "::1", 443) == "https://[::1]:443"


def test_requests_validate_without_a_server_and_defer_checks_to_the_job() -> None:
    # Outside an HTTP submission there is no allow-list at hand: the job checks it.
    assert EndpointRequest(base_url="http://example.com/v1").base_url == "http://example.com/v1"
    assert SmokeRequest().model is None


@pytest.mark.parametrize(
    "fields",
    [{}, {"contains": "a", "exact": "b"}, {"regex": "(unclosed"}, {"regex": "a" * 600}],
)
def test_expectation_needs_exactly_one_valid_check(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Expectation(**fields)


@pytest.mark.parametrize(
    ("fields", "text", "holds"),
    [
        ({"contains": "cat"}, "the cat sat", True),
        ({"contains": "CAT"}, "the cat sat", False),
        ({"contains": "CAT", "ignore_case": True}, "the cat sat", True),
        ({"not_contains": "dog"}, "the cat sat", True),
        ({"not_contains": "cat"}, "the cat sat", False),
        ({"exact": "the cat sat"}, "the cat sat", True),
        ({"exact": "the cat"}, "the cat sat", False),
        ({"regex": r"c.t\b"}, "the cat sat", True),
        ({"regex": r"^cat"}, "the cat sat", False),
    ],
)
def test_expectations(fields: dict[str, Any], text: str, holds: bool) -> None:
    assert prompts.expectation_holds(Expectation(**fields), text)[0] is holds


def test_a_runaway_regex_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prompts, "REGEX_TIMEOUT_S", 0.05)
    with pytest.raises(RuntimeError, match="longer than"):
        prompts.regex_search(r"(x+x+)+y", "x" * 5000, ignore_case=False)


def _raise(exc: BaseException) -> Any:
    def run() -> None:
        raise exc

    return run


@pytest.mark.parametrize(
    ("run", "status", "key"),
    [
        (lambda: {"value": 1.5}, CaseStatus.passed, "value"),
        (_raise(CaseFailed("wrong", got=2)), CaseStatus.failed, "got"),
        (_raise(CaseSkipped("not here")), CaseStatus.skipped, "reason"),
        (_raise(KeyError("oops")), CaseStatus.errored, "error"),
    ],
)
def test_case_outcomes(run: Any, status: CaseStatus, key: str) -> None:
    result = run_case(Case("c", run))
    assert result.status == status and key in result.details and result.duration_ms >= 0


@pytest.mark.parametrize("signal", [RunCancelled(), SuiteTimeout("late")])
def test_stop_signals_end_the_run_not_the_case(signal: BaseException) -> None:
    with pytest.raises(type(signal)):
        run_case(Case("c", _raise(signal)))


def test_watchdog_checks_cancel_then_the_deadline() -> None:
    now = [0.0]
    calls: list[int] = []
    watchdog = Watchdog(lambda: calls.append(1), timeout_s=2.0, clock=lambda: now[0])
    watchdog.check()
    now[0] = 1.5
    assert watchdog.remaining() == 0.5
    now[0] = 2.5
    with pytest.raises(SuiteTimeout) as late:
        watchdog.check()
    assert late.value.code == "timeout" and len(calls) == 2


def test_details_are_plain_json() -> None:
    details = jsonable({"nan": float("nan"), "t": torch.tensor(2.5), "s": {1, 2}, "x": (1, None)})
    assert json.loads(json.dumps(details, allow_nan=False)) == {
        "nan": "nan",
        "t": 2.5,
        "s": [1, 2],
        "x": [1, None],
    }


def test_report_counts_and_summary() -> None:
    report = TestReport(suite="smoke", model="m")
    for status in ("passed", "passed", "failed", "skipped"):
        report.add(run_case(Case(status, _outcome(status))))
    assert (report.passed, report.failed, report.skipped, report.errored) == (2, 1, 1, 0)
    assert not report.ok and report.summary()["failed"] == 1 and "cases" not in report.summary()


def _outcome(status: str) -> Any:
    return {
        "passed": lambda: None,
        "failed": _raise(CaseFailed("no")),
        "skipped": _raise(CaseSkipped("n/a")),
    }[status]


def test_compare_uses_a_norm_wise_bound_and_refuses_nan() -> None:
    reference = torch.tensor([[10.0, -2.0]])
    assert compare(reference + 1e-3, reference, Tolerance(1e-4, 1e-4))["ok"]  # bound 1.1e-3
    assert not compare(reference + 1e-2, reference, Tolerance(1e-4, 1e-4))["ok"]
    assert not compare(reference * float("nan"), reference, Tolerance(1.0, 1.0))["ok"]
    assert tolerance_for(torch.bfloat16).rtol > tolerance_for(torch.float32).rtol
    assert tolerance_for(torch.float32, atol=0.5).atol == 0.5


def test_statistics() -> None:
    assert repetition_rate(list(b"abcdefgh"), 2) == 0.0
    assert repetition_rate(list(b"abababababab"), 2) == pytest.approx(1 - 2 / 11)
    assert repetition_rate([1], 4) == 0.0
    assert invalid_utf8_bytes(list("héllo €".encode())) == 0
    assert invalid_utf8_bytes([0xFF, 0x41, 0xE2, 0x82]) == 3
    assert unigram_entropy(torch.tensor([5, 5, 5, 5])) == pytest.approx(2.0)
    assert unigram_entropy(torch.tensor([7, 0, 0])) == 0.0


def test_sse_parsing() -> None:
    lines = [": keep-alive", "", "data: {}", "", "data: a", "data: b", "", "event: x", "oops", ""]
    assert sse_payloads(lines) == (["{}", "a\nb"], ["oops"])


def _chunk(text: str | None, finish: str | None = None, usage: Any = None) -> str:
    choices = [] if text is None else [{"index": 0, "text": text, "finish_reason": finish}]
    return json.dumps({"object": "text_completion", "choices": choices, "usage": usage})


USAGE = {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}


def test_stream_checks() -> None:
    payloads = [_chunk("a"), _chunk("b", "length"), _chunk(None, usage=USAGE), "[DONE]"]
    good = SseStream(200, "text/event-stream; charset=utf-8", payloads)
    streamed = check_stream(good, "text_completion", chat=False, max_tokens=2)
    assert (streamed.text, streamed.finish_reason, streamed.chunks) == ("ab", "length", 3)
    faults = [
        [*payloads, "[DONE]"],  # two [DONE]
        [*payloads[:2], "[DONE]"],  # no usage chunk
        [_chunk("a"), _chunk("b"), payloads[2], "[DONE]"],  # no finish_reason
        ["[DONE]", *payloads[:3]],  # [DONE] not last
    ]
    for fault in faults:
        with pytest.raises(CaseFailed):
            check_stream(SseStream(200, "text/event-stream", fault), "text_completion", False, 2)


def test_error_body_checks() -> None:
    body = {
        "error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": "x"}
    }
    assert check_error(400, json.dumps(body).encode())["code"] == "x"
    for status, raw in ((422, b'{"detail": []}'), (500, json.dumps(body).encode()), (400, b"<")):
        with pytest.raises(CaseFailed):
            check_error(status, raw)


def test_every_suite_declares_itself() -> None:
    for kind, module in SUITES.items():
        assert module.REQUEST.model_fields["kind"].default == kind
        assert module.DESCRIPTION and module.CASE_NAMES and callable(module.plan)
