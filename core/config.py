"""The one Settings tree (DESIGN §8).

Layers, lowest first: built-in defaults < YAML file (``--config``) < environment
(``HATCHERY_…``, nested with ``__``) < CLI overrides. Everything is validated once, at start-up;
unknown keys are refused so that a typo never silently falls back to a default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from core.deployment import check_ray_setup
from core.errors import ConfigError

_FORBID = ConfigDict(extra="forbid")


class ServerSettings(BaseModel):
    model_config = _FORBID
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_body_bytes: int = Field(1_048_576, gt=0)
    # Binding beyond loopback with auth off is refused at start-up unless this is true: such a
    # server lets anyone who reaches it run jobs and read every run.
    allow_insecure: bool = False


class ModelSettings(BaseModel):
    model_config = _FORBID
    default: str = "bdh-shakespeare"
    models_dir: str = "models"
    device: str = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    preload: list[str] = Field(default_factory=lambda: ["bdh-shakespeare"])
    # torch intra-op CPU threads for this process; None keeps torch's default (one per core).
    # `hatchery serve` picks max(1, cores // (2 * workers)) when this is None: the event loop,
    # the store and the scheduler's lanes need CPU too, and small BDH models gain little from
    # more threads.
    threads: int | None = Field(None, gt=0)
    # Decode threads of this app's engine. Where the fused kernel runs (float32 on the CPU)
    # each scheduler runs one decode lane per thread (see core.engine.lane); a lane decoding
    # alone splits a large batch's step over them (at least 4 sequences per thread).
    # None: one per core.
    decode_threads: int | None = Field(None, gt=0)


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*", re.IGNORECASE)


def parse_byte_size(text: str) -> int:
    """ "512MiB" -> 536870912, "2GB" -> 2000000000, "4096" -> 4096 (B optional, case-free)."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a byte size: {text!r} (use e.g. 1073741824, '512MiB' or '2GB')")
    number, prefix, binary = match.groups()
    if binary and not prefix:
        raise ValueError(f"not a byte size: {text!r}")
    power = "kmgt".find(prefix.lower()) + 1 if prefix else 0
    return int(float(number) * (1024 if binary else 1000) ** power)


class GenerationSettings(BaseModel):
    model_config = _FORBID
    max_tokens: int = Field(256, gt=0)
    max_tokens_limit: int = Field(4096, gt=0)
    max_prompt_bytes: int = Field(65_536, gt=0)
    max_n: int = Field(8, gt=0)
    max_batch: int = Field(32, gt=0)
    max_waiting: int = Field(256, gt=0)
    # Bytes of recurrent state each model's scheduler may hold (decode slots plus the prompt
    # being prefilled on each lane); an int or a size such as "512MiB" or "2GB". None: half
    # the memory available at start-up (the device's free memory on CUDA), see
    # core.engine.admission. Requests beyond it wait in the queue.
    max_state_memory: int | None = Field(None, gt=0)

    @field_validator("max_state_memory", mode="before")
    @classmethod
    def _byte_size(cls, value: object) -> object:
        return parse_byte_size(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _default_within_limit(self) -> GenerationSettings:
        if self.max_tokens > self.max_tokens_limit:
            raise ValueError("generation.max_tokens must not exceed generation.max_tokens_limit")
        return self


class StoreSettings(BaseModel):
    model_config = _FORBID
    url: str = Field("sqlite:///./data/hatchery.db", min_length=1)


class RayResources(BaseModel):
    """What one run asks Ray for (``ray.remote`` options)."""

    model_config = _FORBID
    num_cpus: float | None = Field(None, ge=0)
    num_gpus: float | None = Field(None, ge=0)
    memory: int | None = Field(None, gt=0)  # bytes
    resources: dict[str, float] = Field(default_factory=dict)  # custom resources


_RESOURCE_KEY = re.compile(r"[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)?")


class ExecutorSettings(BaseModel):
    model_config = _FORBID
    kind: Literal["local", "ray"] = "local"
    concurrency: dict[str, int] = Field(
        default_factory=lambda: {"test": 2, "generator": 4, "benchmark": 1}
    )
    heartbeat_s: float = Field(5.0, gt=0)
    max_attempts: int = Field(2, gt=0)
    # null: start a local Ray instance in this process; "auto": the cluster this machine is part
    # of; "host:port" (GCS) or "ray://host:10001" (Ray Client): that cluster.
    ray_address: str | None = None
    # Per component ("benchmark") or component and kind ("generator.model"); the most specific
    # entry wins. Without one a run asks for one CPU.
    ray_resources: dict[str, RayResources] = Field(default_factory=dict)
    # On shutdown, running jobs get this long to stop before they are re-queued.
    grace_s: float = Field(10.0, gt=0)

    @field_validator("concurrency")
    @classmethod
    def _concurrency_not_negative(cls, value: dict[str, int]) -> dict[str, int]:
        # 0: this process accepts the component's runs but leaves running them to others
        # (an API-only replica); with kind ray the limits hold across the whole cluster.
        bad = sorted(name for name, limit in value.items() if limit < 0)
        if bad:
            raise ValueError(f"concurrency must not be negative for: {', '.join(bad)}")
        return value

    @field_validator("ray_resources")
    @classmethod
    def _resource_keys(cls, value: dict[str, RayResources]) -> dict[str, RayResources]:
        bad = sorted(key for key in value if not _RESOURCE_KEY.fullmatch(key))
        if bad:
            raise ValueError(f"keys must be 'component' or 'component.kind', not: {', '.join(bad)}")
        return value

    def ray_options(self, component: str, kind: str) -> dict[str, Any]:
        """The ``ray.remote`` resource options for one run of ``component``/``kind``."""
        entry = self.ray_resources.get(f"{component}.{kind}") or self.ray_resources.get(component)
        if entry is None:
            return {"num_cpus": 1}
        options: dict[str, Any] = entry.model_dump(exclude_none=True, exclude={"resources"})
        if entry.resources:
            options["resources"] = dict(entry.resources)
        return options


class AuthSettings(BaseModel):
    model_config = _FORBID
    enabled: bool = False
    # Plain keys or "sha256:<64 hex>" digests; plain keys are hashed on load and never kept.
    api_keys: list[str] = Field(default_factory=list)
    admin_keys: list[str] = Field(default_factory=list)
    # Failed authentications a client address may make in a moving minute; then every request
    # from it gets 429 with Retry-After until the window frees up (key guessing stays slow).
    max_failures_per_minute: int = Field(60, gt=0)

    @field_validator("api_keys", "admin_keys")
    @classmethod
    def _well_formed(cls, keys: list[str]) -> list[str]:
        for key in keys:
            if not key:
                raise ValueError("API keys must not be empty")
            if key.startswith("sha256:"):
                digest = key.removeprefix("sha256:")
                if len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest):
                    raise ValueError("a 'sha256:' key must be followed by 64 hex digits")
        return keys

    @model_validator(mode="after")
    def _keys_when_enabled(self) -> AuthSettings:
        if self.enabled and not (self.api_keys or self.admin_keys):
            raise ValueError("auth.enabled is true but no auth.api_keys or auth.admin_keys given")
        return self


RATE_LIMIT_STORAGE_SCHEMES = (
    "memory",
    "redis",
    "rediss",
    "redis+unix",
    "redis+cluster",
    "redis+sentinel",
)


class RateLimitingSettings(BaseModel):
    model_config = _FORBID
    enabled: bool = False
    requests_per_minute: int = Field(600, gt=0)
    # "memory://" counts per process; a Redis URL shares the counts between replicas.
    storage: str = "memory://"

    @field_validator("storage")
    @classmethod
    def _known_storage(cls, value: str) -> str:
        scheme, separator, _ = value.partition("://")
        if not separator or scheme.removeprefix("async+") not in RATE_LIMIT_STORAGE_SCHEMES:
            choices = ", ".join(f"{s}://" for s in RATE_LIMIT_STORAGE_SCHEMES)
            raise ValueError(f"unsupported rate limit storage {value!r}: use one of {choices}")
        return value


class CorsSettings(BaseModel):
    model_config = _FORBID
    allow_origins: list[str] = Field(default_factory=list)
    allow_credentials: bool = False

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> CorsSettings:
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError(
                'cors.allow_origins "*" cannot be combined with cors.allow_credentials: '
                "list the allowed origins explicitly"
            )
        return self


class LoggingSettings(BaseModel):
    # "json" would shadow BaseModel.json, so the attribute is json_format and the key stays json.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    json_format: bool = Field(False, alias="json")

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class OutboundSettings(BaseModel):
    """Hosts that runs calling URLs (endpoint tests, serving benchmarks) may reach."""

    model_config = _FORBID
    allow_hosts: list[str] = Field(default_factory=lambda: ["127.0.0.1", "localhost", "::1"])


class ServicesSettings(BaseModel):
    """Where the other components are, for a process that does not serve them itself.

    Each is the root URL of a server (``http://generator:8001``), without ``/v1``. A process
    that does not serve ``/v1`` sends endpoint tests, the smoke suite's serving case and
    serving benchmarks to ``generator_url``'s ``/v1``, with ``api_key``.
    """

    model_config = _FORBID
    generator_url: str | None = None
    test_url: str | None = None
    benchmark_url: str | None = None
    # The key this server presents to its peers (they usually share the deployment's key).
    api_key: SecretStr | None = None

    @field_validator("generator_url", "test_url", "benchmark_url")
    @classmethod
    def _root_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http:// or https:// URL with a host")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError(f"{value!r} must not carry credentials, a query or a fragment")
        return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))

    def peers(self) -> dict[str, str]:
        """Component name -> root URL, for the peers that are configured."""
        urls = {"generator": self.generator_url, "test": self.test_url}
        urls["benchmark"] = self.benchmark_url
        return {name: url for name, url in urls.items() if url is not None}

    def auth_headers(self) -> dict[str, str]:
        if self.api_key is None:
            return {}
        return {"Authorization": f"Bearer {self.api_key.get_secret_value()}"}


# The YAML layer for the Settings() call in progress; a context variable keeps concurrent
# load_settings calls (tests) from seeing each other's files.
_yaml_layer: ContextVar[Mapping[str, Any] | None] = ContextVar("hatchery_yaml_layer", default=None)


class _YamlLayer(PydanticBaseSettingsSource):
    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return (_yaml_layer.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_yaml_layer.get() or {})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HATCHERY_",
        env_nested_delimiter="__",
        extra="forbid",
        case_sensitive=False,
    )

    server: ServerSettings = Field(default_factory=ServerSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    executor: ExecutorSettings = Field(default_factory=ExecutorSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    rate_limiting: RateLimitingSettings = Field(default_factory=RateLimitingSettings)
    cors: CorsSettings = Field(default_factory=CorsSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    outbound: OutboundSettings = Field(default_factory=OutboundSettings)
    services: ServicesSettings = Field(default_factory=ServicesSettings)
    data_dir: str = "data"

    @model_validator(mode="after")
    def _executor_can_run(self) -> Settings:
        if self.executor.kind == "ray":
            check_ray_setup(self.store.url, self.executor.ray_address)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest priority first: CLI (init kwargs) > environment > YAML > defaults.
        return init_settings, env_settings, _YamlLayer(settings_cls)


def load_settings(config_file: str | Path | None = None, **cli_overrides: Any) -> Settings:
    """Build the validated Settings tree.

    ``cli_overrides`` may be nested (``server={"port": 9000}``) or dotted
    (``**{"server.port": 9000}``); ``None`` values mean "flag not given" and are skipped.
    Raises ``ConfigError`` with one line per problem.
    """
    yaml_data = _read_yaml(Path(config_file)) if config_file is not None else {}
    overrides = _expand_dotted(cli_overrides)
    token = _yaml_layer.set(yaml_data)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, config_file)) from None
    finally:
        _yaml_layer.reset(token)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must contain a mapping at the top level")
    return data


def _expand_dotted(overrides: Mapping[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        *parents, leaf = key.split(".")
        node = result
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r} conflicts with another override")
        if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf].update(value)
        else:
            node[leaf] = dict(value) if isinstance(value, Mapping) else value
    return result


def _describe(exc: ValidationError, config_file: str | Path | None) -> str:
    source = f" (config file {config_file}, environment HATCHERY_*, or CLI)" if config_file else ""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown setting (check the spelling; see config.example.yaml)"
        # Checks across sections (a model validator) name their settings in the message.
        problems.append(f"{where}: {message}" if where else message)
    if len(problems) == 1:  # one problem, one line
        return f"invalid settings{source}: {problems[0]}"
    return "\n".join([f"invalid settings{source}:", *(f"  {line}" for line in problems)])
