"""Browser tests: the dashboard and /docs in headless Chromium, driven by Playwright.

The browser is the system's Chromium (Debian's ``chromium`` package; ``HATCHERY_CHROMIUM``
names another binary); Playwright never downloads one. Without Chromium or Playwright these
tests skip with the reason, except in CI (``CI=true``), where they are mandatory and fail.

Every page runs with the network outside 127.0.0.1 cut: any such request is aborted and
fails the test (the dashboard and /docs must load every asset from the app). Uncaught
JavaScript errors fail the test too. ``HATCHERY_SCREENSHOTS=docs/screenshots`` writes the
screenshots the README shows (by default they go to a temporary folder).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from core.config import Settings
from tests.conftest import engine_settings
from tests.support.poll import poll_until
from tests.support.server import LiveServer
from unified_api.app import create_app

LOCAL_HOSTS = {"127.0.0.1", "localhost"}
API_KEY = "browser-test-key"


def chromium_path() -> str | None:
    named = os.environ.get("HATCHERY_CHROMIUM")
    if named:
        return named
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser tests are mandatory in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings in the developer's environment must not leak into these servers.
    for name in list(os.environ):
        if name.startswith("HATCHERY_") and "__" in name:
            monkeypatch.delenv(name)


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    """One Chromium for this package's tests. Package-scoped on purpose: Playwright's sync API
    keeps an event loop running on the main thread while it is open, and the async tests of
    the packages after this one must find none."""
    executable = chromium_path()
    if executable is None:
        _skip_or_fail("no Chromium found (apt-get install chromium, or set HATCHERY_CHROMIUM)")
    if importlib.util.find_spec("playwright") is None:
        _skip_or_fail("Playwright for Python is not installed (the dev extra pins it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: CI and containers run as root, where Chromium's sandbox cannot start.
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


def browser_settings(root: Path, models_dir: Path, **overrides: Any) -> Settings:
    """A real engine on bdh-nano, a fresh SQLite store, quick benchmarks allowed."""
    base: dict[str, Any] = {
        "executor.grace_s": 2,
        "executor.concurrency": {"test": 2, "generator": 2, "benchmark": 2},
    }
    return engine_settings(f"sqlite:///{root / 'hatchery.db'}", models_dir, **(base | overrides))


def wait_ready(url: str, headers: dict[str, str] | None = None) -> None:
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        poll_until(
            lambda: client.get("/ready").status_code,
            lambda status: status == 200,
            timeout=120,
            interval=0.1,
            what=f"{url}/ready to answer 200",
        )


@pytest.fixture(scope="module")
def unified(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[LiveServer]:
    """The unified server, auth off."""
    server = LiveServer(create_app(browser_settings(tmp_path_factory.mktemp("ui"), models_dir)))
    server.start()
    wait_ready(server.url)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    named = os.environ.get("HATCHERY_SCREENSHOTS")
    directory = Path(named) if named else tmp_path_factory.mktemp("screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture
def page(browser: Any, screenshot_dir: Path) -> Iterator[Any]:
    """A fresh tab (its own session storage) with outside network cut and JS errors caught."""
    context = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
    blocked: list[str] = []
    errors: list[str] = []

    def route(request_route: Any) -> None:
        if urlsplit(request_route.request.url).hostname in LOCAL_HOSTS:
            request_route.continue_()
        else:
            blocked.append(request_route.request.url)
            request_route.abort()

    context.route("**/*", route)
    tab = context.new_page()
    tab.set_default_timeout(90_000)
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    context.close()
    assert not blocked, f"the page reached outside the app: {blocked}"
    assert not errors, f"uncaught JavaScript errors: {errors}"


@pytest.fixture
def shoot(page: Any, screenshot_dir: Path) -> Callable[[str], None]:
    """Saves a full-page screenshot of the current page as <name>.png."""

    def save(name: str) -> None:
        page.screenshot(path=screenshot_dir / f"{name}.png", full_page=True)

    return save


def api_client(server: LiveServer, key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else None
    return httpx.Client(base_url=server.url, headers=headers, timeout=60)
