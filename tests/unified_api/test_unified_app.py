"""One port for everything, or one component alone on its own: same paths either way."""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from core.config import load_settings
from tests.support.poll import poll_until
from tests.support.sample_component import SAMPLE
from tests.support.server import LiveServer
from tests.unified_api.helpers import installed_components, nano_settings, wait_ready
from unified_api.app import UI_DIR, create_app
from unified_api.components import COMPONENTS, component
from unified_api.dashboard import dashboard_files
from unified_api.serve import build_app

LiveServerFactory = Callable[[FastAPI], LiveServer]
SYSTEM_PATHS = ("/health", "/ready", "/info", "/stats", "/metrics")


def operation_ids(client: httpx.Client) -> set[str]:
    schema = client.get("/openapi.json").json()
    return {op["operationId"] for path in schema["paths"].values() for op in path.values()}


def test_unified_server_serves_every_path_on_one_port(
    tmp_path: Path, models_dir: Path, live_server: LiveServerFactory
) -> None:
    server = live_server(create_app(nano_settings(tmp_path, models_dir)))
    components = installed_components()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        wait_ready(client)
        for path in (*SYSTEM_PATHS, "/api/runs", "/openapi.json", "/docs"):
            assert client.get(path).status_code == 200, path
        info = client.get("/info").json()
        assert info["components"] == components
        assert info["features"]["dashboard"] is True
        assert info["features"]["openai"] is ("generator" in components)
        assert [m["name"] for m in info["models"] if m["loaded"]] == ["bdh-nano"]
        operations = operation_ids(client)
        assert {"health", "ready", "info", "stats", "metrics", "all_runs"} <= operations
        for name in components:
            assert client.get(f"/api/{name}/runs").json()["count"] == 0
            assert {f"{name}_run", f"{name}_status", f"{name}_results"} <= operations
        for name in set(COMPONENTS) - set(components):
            assert client.get(f"/api/{name}/runs").status_code == 404
        if "generator" in components:
            models = client.get("/v1/models").json()
            assert "bdh-nano" in {model["id"] for model in models["data"]}


def test_dashboard_is_served_without_a_build_step_or_cdn(
    tmp_path: Path, models_dir: Path, live_server: LiveServerFactory
) -> None:
    settings = nano_settings(tmp_path, models_dir, **{"model.preload": []})
    server = live_server(create_app(settings))
    with httpx.Client(base_url=server.url, timeout=30) as client:
        redirect = client.get("/ui")
        assert redirect.status_code == 307 and redirect.headers["location"] == "/ui/"
        page = client.get("/ui/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        scripts = {path: client.get(path) for path in dashboard_files() if path.endswith(".js")}
        assert "/ui/js/main.js" in scripts and 'src="js/main.js"' in page.text
        for path, script in scripts.items():
            assert script.status_code == 200 and "javascript" in script.headers["content-type"]
            # Every module a module imports is served too (no bundler resolves them).
            for name in re.findall(r'from "\./([\w.]+)"', script.text):
                assert f"/ui/js/{name}" in scripts, (path, name)
        assert client.get("/ui/dashboard.css").headers["content-type"].startswith("text/css")
        assert client.get("/ui/templates.json").json().keys() == set(COMPONENTS)
        code = "".join(script.text for script in scripts.values())
        # The SVG namespace is a name, not an address anything is loaded from.
        for text in (page.text, code.replace('"http://www.w3.org/2000/svg"', "")):
            assert "http://" not in text and "https://" not in text  # nothing from a CDN
        # The page's calls are the API's own routes.
        for path in ("/api/runs", "/info", "/ready", "/run", "/cancel/", "/results/", "/v1/"):
            assert path in code
        # Only the named files: no directory lookups.
        assert client.get("/ui/index.html").status_code == 404
        assert client.get("/ui/js/../index.html").status_code == 404
        assert client.get("/ui/missing.js").status_code == 404


def test_runs_of_several_components_are_listed_together_and_followed_live(
    tmp_path: Path, live_server: LiveServerFactory
) -> None:
    extra = APIRouter()

    @extra.get("/v1/ping", operation_id="v1_ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    other = dataclasses.replace(SAMPLE, name="other")
    settings = nano_settings(
        tmp_path,
        tmp_path / "no-models",
        **{"model.preload": [], "executor.concurrency": {"sample": 1, "other": 1}},
    )
    app = create_app(settings, components=[SAMPLE, other], routers=[extra])
    server = live_server(app)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/v1/ping").json() == {"pong": "yes"}
        first = client.post("/api/sample/run", json={"kind": "sleep", "steps": 3}).json()
        second = client.post("/api/other/run", json={"kind": "chatty", "events": 2}).json()
        with connect(f"{server.ws_url}/api/other/ws/{second['id']}") as ws:
            events = []
            with pytest.raises(ConnectionClosed):
                while True:
                    events.append(json.loads(ws.recv(timeout=10)))
            assert ws.close_code == 1000 and events[-1]["data"]["status"] == "succeeded"
        poll_until(
            lambda: client.get(f"/api/sample/status/{first['id']}").json(),
            lambda run: run["status"] == "succeeded",
            timeout=10,
            what="the first run to succeed",
        )
        listed = client.get("/api/runs").json()
        assert listed["count"] == 2
        assert {(r["component"], r["id"]) for r in listed["data"]} == {
            ("sample", first["id"]),
            ("other", second["id"]),
        }
        only_other = client.get("/api/runs", params={"component": "other"}).json()
        assert [r["id"] for r in only_other["data"]] == [second["id"]]
        # One store and one engine for everything in the process.
        assert client.get("/api/sample/runs").json()["count"] == 1
        assert client.get(f"/api/other/status/{first['id']}").status_code == 404


def test_a_spec_declares_routes_outside_its_prefix_apart() -> None:
    outside = APIRouter()

    @outside.get("/v1/models")
    async def models() -> dict[str, str]:
        return {}

    inside = APIRouter(prefix="/api/sample")

    @inside.get("/extra")
    async def extra() -> dict[str, str]:
        return {}

    with pytest.raises(ValueError, match=r"/v1/models.*outside /api/sample/: use root_routers"):
        dataclasses.replace(SAMPLE, routers=[outside])
    with pytest.raises(ValueError, match=r"/api/sample/extra.*under /api/sample/: use routers"):
        dataclasses.replace(SAMPLE, root_routers=[inside])
    declared = dataclasses.replace(SAMPLE, routers=[inside], root_routers=[outside])
    assert declared.root_routers == [outside]


def test_every_route_of_the_unified_app_is_mounted_once(tmp_path: Path, models_dir: Path) -> None:
    app = create_app(nano_settings(tmp_path, models_dir))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a route mounted twice is a duplicate operation id
        paths = app.openapi()["paths"]
    assert {"/v1/models", "/v1/completions", "/tokenize", "/detokenize"} <= set(paths)


@pytest.mark.parametrize("name", list(COMPONENTS))
def test_a_component_alone_serves_its_paths_and_404s_the_others(
    name: str, tmp_path: Path, models_dir: Path, live_server: LiveServerFactory
) -> None:
    server = live_server(component(name).create_app(nano_settings(tmp_path, models_dir)))
    with httpx.Client(base_url=server.url, timeout=30) as client:
        wait_ready(client)
        for path in (*SYSTEM_PATHS, "/openapi.json", "/docs", f"/api/{name}/runs"):
            assert client.get(path).status_code == 200, path
        assert client.get("/info").json()["components"] == [name]
        for other in set(COMPONENTS) - {name}:
            missing = client.get(f"/api/{other}/runs")
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        assert client.get("/ui/").status_code == 404  # the dashboard belongs to the unified app
        v1 = client.get("/v1/models")
        assert v1.status_code == (200 if name == "generator" else 404)
        operations = operation_ids(client)
        assert f"{name}_run" in operations
        others = [other for other in COMPONENTS if other != name]
        assert not [op for op in operations if op.startswith(tuple(f"{o}_" for o in others))]


@pytest.mark.parametrize("name", list(COMPONENTS))
def test_the_dashboard_templates_are_valid_requests(name: str) -> None:
    spec = component(name).spec()
    templates = json.loads((UI_DIR / "templates.json").read_text(encoding="utf-8"))[name]
    parse = spec.job_table().parse
    for kind, template in templates.items():
        body = json.loads(json.dumps(template).replace("{model}", "bdh-nano"))
        request = parse(body)  # what POST /api/{name}/run validates
        assert request.kind == kind and kind in spec.jobs
    assert set(templates) == set(spec.jobs)  # every kind has a template


def test_default_settings_serve_the_shipped_model(
    tmp_path: Path, models_dir: Path, live_server: LiveServerFactory
) -> None:
    """What `make run` serves: bdh-shakespeare, the default and preloaded model."""
    defaults = load_settings().model
    settings = nano_settings(
        tmp_path,
        models_dir,
        **{"model.default": defaults.default, "model.preload": defaults.preload},
    )
    server = live_server(create_app(settings))
    with httpx.Client(base_url=server.url, timeout=60) as client:
        wait_ready(client)
        info = client.get("/info").json()
        shipped = {m["name"]: m for m in info["models"]}["bdh-shakespeare"]
        assert info["default_model"] == "bdh-shakespeare" and shipped["loaded"] is True
        assert 500_000 < shipped["parameters"] < 2_000_000  # bdh-tiny, about 0.85M
        completion = client.post(
            "/v1/completions",
            json={"model": info["default_model"], "prompt": "ROMEO:", "max_tokens": 8},
        )
        assert completion.status_code == 200, completion.text
        body = completion.json()
        assert body["model"] == "bdh-shakespeare"
        assert body["usage"]["completion_tokens"] == 8


def test_a_component_served_by_hatchery_serve_carries_the_dashboard(
    tmp_path: Path, models_dir: Path, live_server: LiveServerFactory
) -> None:
    settings = nano_settings(tmp_path, models_dir, **{"model.preload": []})
    server = live_server(build_app("generator", settings))
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/ui/").status_code == 200
        assert client.get("/ui/js/main.js").status_code == 200
        assert client.get("/info").json()["features"]["dashboard"] is True
