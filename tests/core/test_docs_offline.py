"""/docs and /redoc load every asset from the app itself (they must render without internet)."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from core.api.app import no_engine
from tests.conftest import make_settings
from unified_api.app import create_app

_ASSET_URL = re.compile(r"""(?:src|href)=["']([^"']+)["']|url:\s*'([^']+)'""")


def test_docs_pages_reference_only_local_assets_and_those_are_served(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'docs.db'}")
    with TestClient(create_app(settings, engine_factory=no_engine)) as client:
        for page in ("/docs", "/redoc"):
            html = client.get(page)
            assert html.status_code == 200
            urls = [a or b for a, b in _ASSET_URL.findall(html.text)]
            assert urls, page
            for url in urls:
                assert url.startswith("/"), f"{page} loads {url} from outside the app"
                answer = client.get(url)
                assert answer.status_code == 200 and answer.content, url
        assert "validatorUrl" in client.get("/docs").text  # no call-out to the validator badge


def test_docs_pages_keep_the_browser_on_this_origin(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'docs.db'}")
    with TestClient(create_app(settings, engine_factory=no_engine)) as client:
        for page in ("/docs", "/redoc"):
            policy = client.get(page).headers["content-security-policy"]
            assert "default-src 'self'" in policy and "img-src 'self' data:;" in policy, page
