"""WS /api/generator/stream: several requests on one connection, token events then a result."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from tests.support.server import LiveServer

from .conftest import MODEL


@pytest.fixture
def ws(server: LiveServer) -> Iterator[ClientConnection]:
    with connect(f"{server.ws_url}/api/generator/stream", open_timeout=10) as connection:
        yield connection


def ask(
    ws: ClientConnection, message: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Send one request; return its token events and its final (result or error) event."""
    ws.send(json.dumps(message))
    tokens = []
    while True:
        event = json.loads(ws.recv(timeout=30))
        assert event["id"] == message.get("id")
        if event["type"] == "token":
            tokens.append(event)
        else:
            return tokens, event


def test_two_requests_on_one_connection(ws: ClientConnection, server: LiveServer) -> None:
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 12, "temperature": 0, "n": 2}
    tokens, result = ask(ws, {"id": "first", **body})
    assert result["type"] == "result"
    response = result["data"]
    assert response["object"] == "text_completion" and len(response["choices"]) == 2
    for choice in response["choices"]:
        mine = [t["data"] for t in tokens if t["data"]["choice"] == choice["index"]]
        assert "".join(t["text"] for t in mine) == choice["text"]
        assert mine[-1]["finish_reason"] == "length"
    same = httpx.post(f"{server.url}/v1/completions", json=body).json()
    assert [c["text"] for c in same["choices"]] == [c["text"] for c in response["choices"]]

    chat = {
        "id": "second",
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 8,
        "temperature": 0,
    }
    tokens, result = ask(ws, chat)
    assert result["type"] == "result" and result["data"]["object"] == "chat.completion"
    content = result["data"]["choices"][0]["message"]["content"]
    assert "".join(t["data"]["text"] for t in tokens) == content
    assert result["data"]["usage"]["completion_tokens"] == 8


def test_errors_keep_the_connection_open(ws: ClientConnection) -> None:
    tokens, error = ask(ws, {"id": 1, "model": MODEL, "prompt": "x", "max_tokens": 10**6})
    assert tokens == [] and error["type"] == "error"
    assert error["data"]["code"] == "invalid_value" and error["data"]["param"] == "max_tokens"
    _, missing = ask(ws, {"id": 2, "model": "missing", "prompt": "x"})
    assert missing["data"]["code"] == "model_not_found"
    _, invalid = ask(ws, {"id": 3, "model": MODEL, "prompt": "x", "temperature": "hot"})
    assert invalid["type"] == "error" and invalid["data"]["param"] == "temperature"
    ws.send("not json")
    assert json.loads(ws.recv(timeout=10))["data"]["code"] == "invalid_message"
    ws.send(json.dumps({"type": "ping"}))
    assert json.loads(ws.recv(timeout=10)) == {"type": "pong"}
    _, ok = ask(ws, {"id": 4, "model": MODEL, "prompt": "x", "max_tokens": 3})
    assert ok["type"] == "result" and ok["data"]["usage"]["completion_tokens"] == 3


def test_cancel_aborts_the_current_generation(ws: ClientConnection) -> None:
    ws.send(json.dumps({"id": "long", "model": MODEL, "prompt": "x", "max_tokens": 20_000}))
    first = json.loads(ws.recv(timeout=30))
    assert first["type"] == "token"
    ws.send(json.dumps({"type": "cancel"}))
    while (event := json.loads(ws.recv(timeout=30)))["type"] == "token":
        pass
    assert event["type"] == "result"
    choice = event["data"]["choices"][0]
    assert choice["finish_reason"] == "abort"
    assert event["data"]["usage"]["completion_tokens"] < 20_000
