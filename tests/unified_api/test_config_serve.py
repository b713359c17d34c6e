"""Settings for serving: the example file, the keys added for serving, the CLI flag layer.

The basic layering and refusals (defaults < YAML < env < overrides, unknown keys, CORS
wildcard with credentials via overrides) are in tests/core/test_config.py; these cover the
`hatchery serve` flags on top, the refusals coming from files and the environment, and
the documented example.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.config import Settings, load_settings
from core.errors import ConfigError
from unified_api.serve import (
    SERVE_ENV,
    ServeOptions,
    app_from_environment,
    default_threads,
    resolve_options,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"


def leaf_keys(data: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        # executor.concurrency is a mapping value, not a section
        if isinstance(value, dict) and dotted != "executor.concurrency":
            keys |= leaf_keys(value, f"{dotted}.")
        else:
            keys.add(dotted)
    return keys


def test_example_config_documents_every_key_with_its_default() -> None:
    documented = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    defaults = Settings().model_dump(by_alias=True)
    assert leaf_keys(documented) == leaf_keys(defaults)
    assert load_settings(EXAMPLE).model_dump() == load_settings().model_dump()


def test_serving_keys_and_their_refusals() -> None:
    settings = load_settings()
    assert settings.model.threads is None and settings.executor.grace_s == 10
    assert load_settings(**{"model.threads": 3}).model.threads == 3
    assert (
        load_settings(**{"rate_limiting.storage": "redis://h:6379/1"}).rate_limiting.enabled
        is False
    )
    cases = [
        ({"model.threads": 0}, "model.threads: Input should be greater than 0"),
        ({"executor.grace_s": 0}, "executor.grace_s: Input should be greater than 0"),
        ({"rate_limiting.requests_per_minute": -5}, "rate_limiting.requests_per_minute"),
        ({"rate_limiting.storage": "mongodb://db"}, "unsupported rate limit storage"),
        ({"rate_limiting.storage": "redis"}, "use one of memory://, redis://"),
    ]
    for overrides, expected in cases:
        with pytest.raises(ConfigError) as caught:
            load_settings(**overrides)
        assert expected in caught.value.message, caught.value.message


def test_refusals_from_the_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("cors: {allow_origins: ['*'], allow_credentials: true}\n", encoding="utf-8")
    with pytest.raises(
        ConfigError, match=r"cors: .*cannot be combined with cors.allow_credentials"
    ):
        load_settings(config)
    config.write_text("server: {port: 8000, max_body_bytes: 0}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"server\.max_body_bytes: Input should be greater"):
        load_settings(config)
    config.write_text("generation: {max_batch: 4}\n", encoding="utf-8")
    monkeypatch.setenv("HATCHERY_GENERATION__MAX_WAITING", "0")
    with pytest.raises(ConfigError, match=r"generation\.max_waiting: Input should be greater"):
        load_settings(config)
    monkeypatch.setenv("HATCHERY_GENERATION__MAX_WAITING", "8")
    monkeypatch.setenv("HATCHERY_MODEL__THREDS", "2")
    with pytest.raises(ConfigError, match=r"model\.threds: unknown setting"):
        load_settings(config)


def test_flags_override_env_override_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "server: {host: 10.0.0.1, port: 9001, allow_insecure: true}\n"
        "model: {default: from-file, threads: 2}\n",
        encoding="utf-8",
    )
    options, settings = resolve_options("generator", str(config))
    assert (settings.server.host, settings.server.port) == ("10.0.0.1", 9001)
    assert settings.model.threads == 2  # configured: the serve default does not replace it
    assert "model.threads" not in options.overrides

    monkeypatch.setenv("HATCHERY_SERVER__PORT", "9002")
    monkeypatch.setenv("HATCHERY_MODEL__DEFAULT", "from-env")
    _, settings = resolve_options("generator", str(config))
    assert settings.server.port == 9002 and settings.model.default == "from-env"

    options, settings = resolve_options(
        "generator", str(config), host="127.0.0.1", port=9003, model="bdh-nano", threads=1
    )
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 9003)
    assert settings.model.default == "bdh-nano" and settings.model.preload == ["bdh-nano"]
    assert settings.model.threads == 1
    assert options.target == "generator" and options.config_file == str(config)

    with pytest.raises(ConfigError, match=r"server\.port"):
        resolve_options("all", None, port=0)
    with pytest.raises(ConfigError, match=r"server\.allow_insecure"):
        resolve_options("all", None, host="0.0.0.0")
    with pytest.raises(ValueError, match="unknown target"):
        resolve_options("everything", None)


def test_serve_picks_torch_threads_when_unset() -> None:
    options, settings = resolve_options("all", None, workers=1)
    assert settings.model.threads == options.overrides["model.threads"] == default_threads(1)
    assert default_threads(1) >= 1 and default_threads(64) == 1
    assert default_threads(1) >= default_threads(2)


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root_logging")
def test_workers_rebuild_the_same_app_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, models_dir: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'h.db'}"
    config = tmp_path / "config.yaml"
    secret = "file-only-secret-key"
    config.write_text(
        yaml.safe_dump(
            {
                "store": {"url": store},
                "model": {"models_dir": str(models_dir)},
                "auth": {"enabled": True, "api_keys": [secret]},
            }
        ),
        encoding="utf-8",
    )
    options, _ = resolve_options("all", str(config), model="bdh-nano", threads=1)
    monkeypatch.setenv(SERVE_ENV, options.to_env())
    assert ServeOptions.from_env() == options
    assert secret not in options.to_env()  # workers re-read the file; keys are not copied
    app = app_from_environment()
    assert app.state.settings.store.url == store
    assert app.state.settings.auth.enabled is True
    assert app.state.settings.model.preload == ["bdh-nano"]
    assert app.state.settings == resolve_options("all", str(config), model="bdh-nano", threads=1)[1]
