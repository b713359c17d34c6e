"""Dockerfile, .dockerignore and docker-compose.yml agree with the settings.

No Docker engine runs here: the files are parsed (YAML, Dockerfile instructions, ignore
patterns) and checked against the settings the servers would load from them.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.api.outbound import allowed_hosts
from core.config import Settings, load_settings
from core.deployment import check_exposure
from unified_api.components import ALL, COMPONENTS, SERVE_TARGETS

ROOT = Path(__file__).resolve().parents[2]
# compose service -> the `hatchery serve` target it runs: the unified server, then each alone.
HATCHERY_SERVICES = {"hatchery": ALL} | {name: name for name in COMPONENTS}
# The registry's default ports: generator 8001, test 8002, benchmark 8003.
COMPONENT_PORTS = {name: entry.default_port for name, entry in COMPONENTS.items()}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    joined = re.sub(r"\\\n", " ", text)
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


API_KEY = "key-from-the-environment"


def interpolate(value: Any) -> Any:
    """Compose's ${NAME:-default} with nothing set: the defaults; ${HATCHERY_API_KEY:?...}
    (required) as if the user exported it."""
    if isinstance(value, str):
        value = re.sub(r"\$\{HATCHERY_API_KEY:\?[^}]*\}", API_KEY, value)
        return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
    return value


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text("utf-8"))
    return data


def test_dockerfile_builds_a_non_root_cpu_image_serving_on_8000() -> None:
    instructions = dockerfile_instructions()
    by_keyword: dict[str, list[str]] = {}
    for keyword, rest in instructions:
        by_keyword.setdefault(keyword, []).append(rest)
    args = dict(arg.split("=", 1) for arg in by_keyword["ARG"])
    assert args["PYTHON_IMAGE"].startswith("python:3.11") and "slim" in args["PYTHON_IMAGE"]
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")  # CPU torch unless told otherwise
    assert by_keyword["FROM"] == ["${PYTHON_IMAGE}"]
    assert any("${TORCH_INDEX_URL}" in run and "torch==" in run for run in by_keyword["RUN"])
    assert any(re.search(r'pip install "?\.', run) for run in by_keyword["RUN"])
    assert args["EXTRAS"] == "ray"  # the image can be a Ray head or worker too
    user = by_keyword["USER"][-1]
    assert user not in ("root", "0")
    assert any("useradd" in run and user in run for run in by_keyword["RUN"])
    copied = {next(a for a in shlex.split(c) if not a.startswith("--")) for c in by_keyword["COPY"]}
    packages = {"core", "unified_api", "clients", "hatchery_cli"}
    packages |= {entry.package for entry in COMPONENTS.values()}
    assert packages | {"pyproject.toml"} <= copied
    # Only the shipped model goes into the image, owned by the server's user, where the
    # models volume is mounted (so a fresh volume is seeded with it, writable).
    models = [c for c in by_keyword["COPY"] if "models/" in c]
    assert models == [f"--chown={user}:{user} models/bdh-shakespeare ./models/bdh-shakespeare"]
    assert "/app/models" in json.loads(by_keyword["VOLUME"][-1])
    assert any("/app/models" in run and "chown" in run and user in run for run in by_keyword["RUN"])
    env = " ".join(by_keyword["ENV"])
    assert (
        "HATCHERY_MODEL__MODELS_DIR=/app/models" in env and "HATCHERY_SERVER__HOST=0.0.0.0" in env
    )
    assert by_keyword["EXPOSE"] == [str(load_settings().server.port)]
    healthcheck = by_keyword["HEALTHCHECK"][0]
    assert "/health" in healthcheck and "CMD" in healthcheck
    assert json.loads(by_keyword["CMD"][-1]) == ["hatchery", "serve", "all"]  # exec form: PID 1
    # The last USER comes after every RUN that needs root.
    keywords = [keyword for keyword, _ in instructions]
    assert max(i for i, k in enumerate(keywords) if k == "RUN") < keywords.index("USER")


@pytest.mark.parametrize("service", list(HATCHERY_SERVICES))
def test_compose_services_agree_with_the_settings(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = compose()["services"][service]
    target = HATCHERY_SERVICES[service]
    assert spec["command"] == ["hatchery", "serve", target] and target in SERVE_TARGETS
    environment = {key: interpolate(str(value)) for key, value in spec["environment"].items()}
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()  # every variable is a real, valid setting
    assert settings.server.host == "0.0.0.0"
    # Bound beyond loopback: auth on with the key from the environment, so it starts.
    assert settings.auth.enabled and not settings.server.allow_insecure
    check_exposure(settings)
    assert settings.services.api_key is not None
    assert settings.services.api_key.get_secret_value() == API_KEY
    assert f"hatchery-models:{settings.model.models_dir}" in spec["volumes"]
    assert settings.store.url.startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in settings.store.url
    assert settings.rate_limiting.enabled and settings.rate_limiting.storage.startswith(
        "redis://redis:"
    )
    host_port, container_port = spec["ports"][0].split(":")
    assert int(container_port) == settings.server.port == int(host_port)
    if target != ALL:  # each component alone listens on the port the registry gives it
        assert settings.server.port == COMPONENTS[target].default_port
    assert f"127.0.0.1:{settings.server.port}/health" in " ".join(spec["healthcheck"]["test"])
    assert spec["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert spec["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_has_postgres_and_redis_with_health_checks() -> None:
    services = compose()["services"]
    ports = [services[name]["ports"][0] for name in HATCHERY_SERVICES]
    assert len(set(ports)) == len(ports)  # each server on its own port
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    user = postgres["environment"]["POSTGRES_USER"]
    database = postgres["environment"]["POSTGRES_DB"]
    store_url = interpolate(services["hatchery"]["environment"]["HATCHERY_STORE__URL"])
    password = interpolate(postgres["environment"]["POSTGRES_PASSWORD"])
    assert store_url.endswith(f"://{user}:{password}@postgres:5432/{database}")
    assert services["redis"]["image"].startswith("redis:")
    assert "ping" in services["redis"]["healthcheck"]["test"]
    assert services["hatchery"].get("profiles") is None  # the unified server always runs
    for name in ("test", "generator", "benchmark"):
        assert services[name]["profiles"] == ["components"]


def test_compose_ray_profile_runs_two_replicas_on_a_ray_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = compose()["services"]
    head, worker = services["ray-head"], services["ray-worker"]
    assert head["profiles"] == worker["profiles"] == ["ray"]
    assert head["image"] == worker["image"] == services["hatchery"]["image"]  # one image
    assert "--head" in head["command"] and "--port=6379" in head["command"]
    assert "--address=ray-head:6379" in worker["command"]
    ports = set()
    for name in ("api-ray-a", "api-ray-b"):
        spec = services[name]
        assert spec["profiles"] == ["ray"] and spec["command"] == ["hatchery", "serve", "all"]
        for key, value in spec["environment"].items():
            monkeypatch.setenv(key, interpolate(str(value)))
        settings = load_settings()
        assert settings.executor.kind == "ray" and settings.executor.ray_address == "ray-head:6379"
        assert settings.store.url.startswith("postgresql+psycopg://")  # workers reach it
        # Actors load models from the directory the API names: the same volume everywhere.
        mount = f"hatchery-models:{settings.model.models_dir}"
        assert mount in spec["volumes"] and mount in head["volumes"] and mount in worker["volumes"]
        ports.add(spec["ports"][0])
    assert len(ports) == 2


def _environment_settings(service: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key, value in compose()["services"][service]["environment"].items():
        monkeypatch.setenv(key, interpolate(str(value)))
    return load_settings()


def test_compose_components_are_wired_by_services(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    ports = {name: int(services[name]["ports"][0].split(":")[0]) for name in COMPONENT_PORTS}
    assert ports == COMPONENT_PORTS  # generator 8001, test 8002, benchmark 8003
    for name in COMPONENT_PORTS:
        with monkeypatch.context() as patch:
            settings = _environment_settings(name, patch)
        peers = settings.services.peers()
        assert peers == {peer: f"http://{peer}:{port}" for peer, port in COMPONENT_PORTS.items()}
        # Test and benchmark send OpenAI requests to the generator, whose host is allowed.
        assert "generator" in allowed_hosts(settings)
    with monkeypatch.context() as patch:
        unified = _environment_settings("hatchery", patch)
    assert unified.services.peers() == {}  # one port serves everything: no peers


def test_compose_refuses_to_start_without_a_key() -> None:
    text = (ROOT / "docker-compose.yml").read_text("utf-8")
    # ${VAR:?message}: compose itself stops with the message when the key is not set.
    assert re.search(r"HATCHERY_AUTH__API_KEYS: '\[\"\$\{HATCHERY_API_KEY:\?[^}]+\}\"\]'", text)
    assert "HATCHERY_AUTH_ENABLED" not in text and "ALLOW_INSECURE" not in text


def test_dockerignore_keeps_local_models_and_data_out() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text("utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        # Docker's rule: the last matching pattern wins; "!" re-includes.
        verdict = False
        for pattern in patterns:
            negated = pattern.startswith("!")
            glob = pattern.lstrip("!").strip("/")
            if fnmatch.fnmatch(path, glob) or fnmatch.fnmatch(path, glob + "/*"):
                verdict = not negated
        return verdict

    for kept in ("core/config.py", "models/bdh-shakespeare/model.safetensors", "pyproject.toml"):
        assert not ignored(kept), kept
    for dropped in ("models/my-local-model/model.safetensors", "data/hatchery.db", ".env"):
        assert ignored(dropped), dropped
    assert ignored(".venv/bin/python") and ignored("hatchery.db")
