from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.config import Settings, load_settings
from core.deployment import check_exposure
from core.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings in the developer's environment must not leak into these tests.
    for name in list(os.environ):
        if name.startswith("HATCHERY_") and "__" in name:
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_match_the_contract() -> None:
    settings = load_settings()
    assert settings.server.model_dump() == {
        "host": "127.0.0.1",
        "port": 8000,
        "max_body_bytes": 1048576,
        "allow_insecure": False,
    }
    assert settings.services.peers() == {} and settings.services.api_key is None
    assert settings.model.preload == ["bdh-shakespeare"]
    assert settings.generation.max_tokens_limit == 4096
    assert settings.store.url == "sqlite:///./data/hatchery.db"
    assert settings.executor.concurrency == {"test": 2, "generator": 4, "benchmark": 1}
    assert (settings.executor.heartbeat_s, settings.executor.max_attempts) == (5, 2)
    assert settings.auth.enabled is False
    assert settings.rate_limiting.storage == "memory://"
    assert settings.cors.allow_origins == []
    assert settings.logging.level == "INFO" and settings.logging.json_format is False
    assert settings.outbound.allow_hosts == ["127.0.0.1", "localhost", "::1"]
    assert settings.data_dir == "data"


def test_layers_yaml_then_env_then_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(
        tmp_path,
        "server: {host: 0.0.0.0, port: 9001}\nlogging: {json: true, level: debug}\n"
        "auth: {enabled: true, api_keys: [from-yaml]}\n",
    )
    settings = load_settings(config)
    assert (settings.server.host, settings.server.port) == ("0.0.0.0", 9001)
    assert settings.logging.json_format is True and settings.logging.level == "DEBUG"

    monkeypatch.setenv("HATCHERY_SERVER__PORT", "9002")
    monkeypatch.setenv("HATCHERY_AUTH__API_KEYS", '["k1", "k2"]')
    settings = load_settings(config)
    assert (settings.server.host, settings.server.port) == ("0.0.0.0", 9002)
    assert settings.auth.api_keys == ["k1", "k2"]

    settings = load_settings(config, **{"server.port": 9003, "model.default": None})
    assert settings.server.port == 9003 and settings.server.host == "0.0.0.0"
    assert settings.model.default == "bdh-shakespeare"  # None means "flag not given"
    assert load_settings(config, server={"max_body_bytes": 10}).server.port == 9002


def test_unrelated_hatchery_env_vars_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HATCHERY_TEST_DATABASE_URL", "postgresql://elsewhere")
    monkeypatch.setenv("HATCHERY_LOAD_TEST_SECONDS", "1")
    assert load_settings().store.url.startswith("sqlite")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"serverr.port": 1}, "serverr: unknown setting"),
        ({"server.bogus": 1}, "server.bogus: unknown setting"),
        ({"cors.allow_origins": ["*"], "cors.allow_credentials": True}, "cannot be combined"),
        ({"generation.max_n": 0}, "generation.max_n: Input should be greater than 0"),
        ({"server.max_body_bytes": -1}, "server.max_body_bytes"),
        ({"executor.concurrency": {"test": -1}}, "concurrency must not be negative for: test"),
        ({"executor.kind": "k8s"}, "executor.kind"),
        ({"generation.max_tokens": 5000}, "must not exceed generation.max_tokens_limit"),
        ({"auth.enabled": True}, "no auth.api_keys or auth.admin_keys"),
        ({"auth.api_keys": ["sha256:abc"]}, "64 hex digits"),
    ],
)
def test_invalid_settings_are_refused_clearly(overrides: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**overrides)
    assert expected in caught.value.message
    assert caught.value.message.startswith("invalid settings")


def test_unknown_keys_in_yaml_and_env_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="modle: unknown setting"):
        load_settings(write(tmp_path, "modle: {default: x}\n"))
    monkeypatch.setenv("HATCHERY_SERVER__PROT", "1")
    with pytest.raises(ConfigError, match=r"server\.prot: unknown setting"):
        load_settings()


def test_bad_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_settings(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "server: {port: [\n"))
    assert load_settings(write(tmp_path, "")).server.port == 8000


def test_settings_class_reads_env_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HATCHERY_STORE__URL", "postgresql+psycopg://db/x")
    monkeypatch.setenv("HATCHERY_LOGGING__JSON", "true")
    settings = Settings()
    assert settings.store.url == "postgresql+psycopg://db/x"
    assert settings.logging.json_format is True


@pytest.mark.parametrize(
    ("store_url", "address", "refused"),
    [
        ("sqlite:///data/h.db", None, None),  # Ray started by this process: same machine
        ("sqlite:///data/h.db", "127.0.0.1:6379", None),  # a cluster on loopback
        ("sqlite:///data/h.db", "ray://10.0.0.5:10001", "Ray workers on other machines"),
        ("sqlite:///data/h.db", "auto", "Ray workers on other machines"),
        ("sqlite://", None, "not in-memory"),
        ("postgresql+psycopg://u@db/h", "ray://10.0.0.5:10001", None),
    ],
)
def test_ray_needs_a_store_its_workers_can_reach(
    store_url: str, address: str | None, refused: str | None
) -> None:
    overrides = {"executor.kind": "ray", "executor.ray_address": address, "store.url": store_url}
    if refused is None:
        assert load_settings(**overrides).executor.kind == "ray"
        return
    with pytest.raises(ConfigError) as caught:
        load_settings(**overrides)
    assert refused in caught.value.message and "\n" not in caught.value.message


def test_ray_resources_per_component_and_kind() -> None:
    resources = {
        "benchmark": {"num_gpus": 1},
        "generator.model": {"num_cpus": 2, "resources": {"trainer": 1}},
    }
    executor = load_settings(**{"executor.ray_resources": resources}).executor
    assert executor.ray_options("benchmark", "engine") == {"num_gpus": 1.0}
    assert executor.ray_options("generator", "model") == {
        "num_cpus": 2.0,
        "resources": {"trainer": 1.0},
    }
    assert executor.ray_options("generator", "text") == {"num_cpus": 1}
    with pytest.raises(ConfigError, match=r"component\.kind"):
        load_settings(**{"executor.ray_resources": {"Bad Key": {}}})
    with pytest.raises(ConfigError, match="gpus"):
        load_settings(**{"executor.ray_resources": {"test": {"gpus": 1}}})


def test_services_from_env_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HATCHERY_SERVICES__GENERATOR_URL", "http://generator:8001/")
    monkeypatch.setenv("HATCHERY_SERVICES__API_KEY", "peer-key")
    settings = load_settings(**{"services.benchmark_url": "https://bench.example:8443"})
    assert settings.services.peers() == {
        "generator": "http://generator:8001",
        "benchmark": "https://bench.example:8443",
    }
    assert settings.services.auth_headers() == {"Authorization": "Bearer peer-key"}
    assert "peer-key" not in repr(settings.services)  # a secret, never printed
    for bad in ("generator:8001", "ftp://g:1", "http://user:pw@g:1", "http://g:1/?x=1"):
        with pytest.raises(ConfigError, match=r"services\.generator_url"):
            load_settings(**{"services.generator_url": bad})


@pytest.mark.parametrize(
    ("overrides", "refused"),
    [
        ({"server.host": "0.0.0.0"}, True),
        ({"server.host": "::"}, True),
        ({"server.host": "0.0.0.0", "server.allow_insecure": True}, False),
        ({"server.host": "0.0.0.0", "auth.enabled": True, "auth.api_keys": ["k"]}, False),
        ({"server.host": "127.0.0.1"}, False),
        ({"server.host": "::1"}, False),
    ],
)
def test_serving_beyond_loopback_needs_auth_or_allow_insecure(
    overrides: dict[str, object], refused: bool
) -> None:
    settings = load_settings(**overrides)  # loading never refuses: clients read these too
    if refused:
        with pytest.raises(ConfigError, match=r"server\.allow_insecure"):
            check_exposure(settings)
    else:
        check_exposure(settings)
