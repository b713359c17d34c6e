"""API keys: sent as Bearer tokens over HTTP and WebSocket; refusals map to Unauthorized."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from clients import ApiClient, NotFound, Unauthorized
from tests.clients.conftest import standin_app
from tests.support.server import LiveServer, serve

KEY, OTHER_KEY = "key-1", "key-2"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    url = f"sqlite:///{tmp_path_factory.mktemp('auth') / 'hatchery.db'}"
    app = standin_app(url, **{"auth.enabled": True, "auth.api_keys": [KEY, OTHER_KEY]})
    with serve(app) as server:
        yield server


def test_without_a_key_everything_but_health_is_refused(
    make_client: Callable[..., Any], secured: LiveServer
) -> None:
    client = make_client(secured.url, api_key="")
    assert client.health().status == "ok"
    with pytest.raises(Unauthorized) as caught:
        client.list_test_runs()
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    wrong = make_client(secured.url, api_key="not-a-key")
    with pytest.raises(Unauthorized):
        wrong.run_test("m", "sleep", steps=1)
    with pytest.raises(Unauthorized):
        list(wrong.monitor_test_ws("0" * 32))  # the WebSocket closes with 4401


def test_a_key_works_over_http_and_websocket(
    make_client: Callable[..., Any], secured: LiveServer
) -> None:
    client = make_client(secured.url, api_key=KEY, typed_results=False)
    run = client.run_test("m-auth", "chatty", events=2)
    events = list(client.monitor_test_ws(run.id))
    assert events[-1].is_terminal and sum(event.type == "log" for event in events) == 2
    assert client.get_test_results(run.id).succeeded
    # Runs belong to the key that made them: another key cannot see this one.
    other = make_client(secured.url, api_key=OTHER_KEY)
    with pytest.raises(NotFound):
        other.get_test_status(run.id)
    with pytest.raises(NotFound):
        list(other.monitor_test_ws(run.id))  # closes with 4404
    assert other.list_test_runs(model="m-auth").count == 0


def test_key_and_url_come_from_the_environment(
    secured: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HATCHERY_URL", secured.url)
    monkeypatch.setenv("HATCHERY_API_KEY", KEY)
    with ApiClient() as client:
        assert client.base_url == secured.url and client.api_key == KEY
        assert client.list_test_runs(limit=1).count >= 0
    monkeypatch.delenv("HATCHERY_URL")
    monkeypatch.delenv("HATCHERY_API_KEY")
    with ApiClient() as client:
        assert client.base_url == "http://127.0.0.1:8000" and client.api_key is None
