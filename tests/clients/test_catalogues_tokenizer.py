"""Both clients' catalogue, tokenizer and interactive-stream methods against the real unified
server (bdh-nano): templates, suites, tokenize/detokenize, WS /api/generator/stream."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from clients import NotFound, ValidationFailed
from tests.support.server import LiveServer

NANO = "bdh-nano"


@pytest.fixture
def client(make_client: Callable[..., Any], real: LiveServer) -> Any:
    return make_client(real.url, timeout=60)


def test_templates_are_the_generators(client: Any, real: LiveServer) -> None:
    templates = client.templates()
    served = httpx.get(f"{real.url}/api/generator/templates").json()["data"]
    assert [t.name for t in templates] == [t["name"] for t in served]
    assert "bdh-nano" in {t.name for t in templates}
    assert all(t.parameters > 0 and t.config for t in templates)


def test_suites_are_the_test_components(client: Any, real: LiveServer) -> None:
    suites = client.suites()
    served = httpx.get(f"{real.url}/api/test/suites").json()["data"]
    assert [s.kind for s in suites] == [s["kind"] for s in served]
    smoke = next(s for s in suites if s.kind == "smoke")
    assert smoke.cases and smoke.description


def test_tokenize_and_detokenize(client: Any) -> None:
    tokenized = client.tokenize("héllo", return_token_strs=True)
    assert tokenized.tokens == list("héllo".encode()) and tokenized.count == 6
    assert tokenized.token_strs[:2] == ["h", "bytes:\\xc3"]
    assert client.detokenize(tokenized.tokens) == "héllo"
    chat = client.tokenize(messages="Hi there", model=NANO)
    assert "Hi there" in bytes(chat.tokens).decode()
    with pytest.raises(NotFound) as missing:
        client.detokenize([65], model="no-such-model")
    assert missing.value.code == "model_not_found"


def test_interactive_stream_yields_tokens_then_the_result(client: Any) -> None:
    events = list(
        client.generate_interactive_ws(NANO, "ROMEO:", max_tokens=8, temperature=0, seed=1)
    )
    tokens, result = events[:-1], events[-1]
    assert result.type == "result" and all(e.type == "token" for e in tokens)
    completion = client.complete(NANO, "ROMEO:", max_tokens=8, temperature=0, seed=1)
    assert "".join(e.text for e in tokens) == result.data["choices"][0]["text"] == completion.text
    assert tokens[-1].data["finish_reason"] == "length"
    chat = list(client.generate_interactive_ws(NANO, messages="Hello", max_tokens=4))
    assert chat[-1].data["object"] == "chat.completion"


def test_interactive_stream_errors_are_raised_like_http_ones(client: Any) -> None:
    with pytest.raises(ValidationFailed) as refused:
        list(client.generate_interactive_ws(NANO, "x", max_tokens=4, no_such_field=1))
    assert refused.value.status_code == 400
    with pytest.raises(NotFound):
        list(client.generate_interactive_ws("no-such-model", "x", max_tokens=4))
