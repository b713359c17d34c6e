"""The dashboard with auth on, on the Generator served alone, and /docs offline."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import API_KEY, api_client, browser_settings, wait_ready
from tests.browser.helpers import PLOT_LOADED, succeeded_benchmark
from tests.support.server import LiveServer
from unified_api.app import create_app
from unified_api.serve import build_app

expect.set_options(timeout=120_000)


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[LiveServer]:
    """The unified server with auth on."""
    settings = browser_settings(
        tmp_path_factory.mktemp("locked"),
        models_dir,
        **{"auth.enabled": True, "auth.api_keys": [API_KEY]},
    )
    server = LiveServer(create_app(settings))
    server.start()
    wait_ready(server.url, {"Authorization": f"Bearer {API_KEY}"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def generator_alone(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path
) -> Iterator[LiveServer]:
    """What `hatchery serve generator` serves."""
    settings = browser_settings(tmp_path_factory.mktemp("generator"), models_dir)
    server = LiveServer(build_app("generator", settings))
    server.start()
    wait_ready(server.url)
    yield server
    server.stop()


def test_with_auth_on_the_key_unlocks_the_dashboard_for_this_tab_only(
    locked: LiveServer, page: Any
) -> None:
    page.goto(f"{locked.url}/ui/")
    expect(page.locator("#page .error")).to_contain_text("needs an API key")
    page.locator("#api-key").fill(API_KEY)
    page.get_by_role("button", name="Use key").click()
    expect(page.locator("#page h2")).to_have_text("Runs")
    assert page.evaluate("sessionStorage.getItem('hatchery.apiKey')") == API_KEY
    assert page.evaluate("localStorage.length") == 0  # nothing outlives the tab

    page.goto(f"{locked.url}/ui/#/start?component=test&kind=smoke")
    page.locator("form.request button[type=submit]").click()
    page.wait_for_url(re.compile(r"#/run/test/"))
    # The live status comes over the run's WebSocket, which carries the key as api_key.
    expect(page.locator(".heading .badge.succeeded")).to_be_visible()
    expect(page.locator(".summary .badge")).to_have_text("passed")

    with api_client(locked, API_KEY) as client:
        run_id = succeeded_benchmark(client)
    page.goto(f"{locked.url}/ui/#/run/benchmark/{run_id}")
    page.wait_for_function(PLOT_LOADED)  # an authenticated fetch, shown as a blob: image


def test_a_wrong_key_is_refused_with_a_clear_message(locked: LiveServer, page: Any) -> None:
    page.goto(f"{locked.url}/ui/")
    page.locator("#api-key").fill("not-the-key")
    page.get_by_role("button", name="Use key").click()
    expect(page.locator("#page .error")).to_contain_text("needs an API key")


def test_the_generator_alone_serves_the_dashboard_for_its_component(
    generator_alone: LiveServer, page: Any
) -> None:
    page.goto(f"{generator_alone.url}/ui/#/start")
    expect(page.locator("select[name=component] option")).to_have_count(1)
    expect(page.locator("#nav-compare")).to_be_hidden()
    expect(page.locator("#nav-models")).to_be_visible()
    page.locator(".field[data-field=max_tokens] input").fill("8")
    page.locator("form.request button[type=submit]").click()
    page.wait_for_url(re.compile(r"#/run/generator/"))
    expect(page.locator(".heading .badge.succeeded")).to_be_visible()
    expect(page.locator("table.grid tbody tr")).to_have_count(1)  # one prompt, one completion
    page.goto(f"{generator_alone.url}/ui/#/playground")
    expect(page.locator("select[name=model] option")).not_to_have_count(0)


def test_docs_and_redoc_render_with_the_outside_network_cut(
    unified: LiveServer, page: Any, shoot: Any
) -> None:
    # The page fixture aborts (and fails on) every request that leaves 127.0.0.1.
    page.goto(f"{unified.url}/docs")
    operations = page.locator(".opblock")
    expect(operations.first).to_be_visible()
    assert operations.count() > 20
    expect(page.locator(".information-container .title")).to_contain_text("Hatchery")
    shoot("docs")
    page.goto(f"{unified.url}/redoc")
    expect(page.get_by_text("/api/runs", exact=False).first).to_be_attached()
    expect(page.locator("[data-section-id]").first).to_be_attached()
