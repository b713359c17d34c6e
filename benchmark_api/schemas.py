"""Benchmark requests and results: kinds `engine` and `serving`, discriminated on `kind`.

Malformed bodies (wrong types, unknown fields, unknown modes) are refused by the framework's
validation (422). Well-formed values the platform will not run — empty lists, sizes over the
hard caps below or over the server's settings (`generation.max_batch`,
`generation.max_tokens_limit`, `generation.max_prompt_bytes`), a device this machine lacks, a
`base_url` off the outbound allow-list — are refused with `InvalidRequest` (400) naming the
field, raised from the validators so that `POST /api/benchmark/run` answers before any run
exists. The settings checks (and the defaults "the server's model", "this server's /v1") need
the server, which `core.api.submission` provides during a request; jobs repeat
`check_settings` against their worker's settings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import torch
from pydantic import ConfigDict, Field, field_validator, model_validator

from benchmark_api.results import Mode
from core.api.outbound import allowed_hosts, check_url, default_base_url
from core.api.request_model import RequestModel, one_or_many
from core.api.submission import current_submission
from core.config import Settings
from core.engine.registry import InvalidModelNameError, validate_model_name
from core.engine.training import TEMPLATES
from core.errors import InvalidRequest

DType = Literal["float32", "bfloat16", "float16"]

# Hard caps, whatever the settings say: they keep one request from asking for days of work.
MAX_CONTEXT = 65_536
MAX_BATCH = 1024
MAX_NEW_TOKENS = 65_536
MAX_REPEATS = 20
MAX_WARMUP = 10
MAX_ROWS = 512
MAX_RECOMPUTE_CONTEXT = 8192  # recompute holds (B, nh, T, T) scores: quadratic memory
MAX_PREFILL_CHUNK = 4096
MAX_BANDWIDTH_MB = 4096
MAX_CONCURRENCY = 1024
MAX_LEVELS = 32
MAX_REQUESTS = 10_000
MAX_REQUEST_RATE = 10_000.0
MAX_TIMEOUT_S = 3600.0

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,2})?)$")

_STRICT = ConfigDict(extra="forbid")


def require(ok: bool, param: str, message: str, code: str = "invalid_request") -> None:
    """Refuse a request value with a 400 naming the field."""
    if not ok:
        raise InvalidRequest(message, param=param, code=code)


def _check_list(values: Sequence[Any], param: str) -> None:
    require(len(values) > 0, param, f"{param} must not be empty")


def _check_range(values: Iterable[float], param: str, low: float, high: float) -> None:
    for value in values:
        require(value >= low, param, f"{param} must be at least {low}, got {value}")
        require(
            value <= high, param, f"{param} must be at most {high}, got {value}", "limit_exceeded"
        )


def _check_model_name(name: str | None) -> None:
    if name is None:
        return
    try:
        validate_model_name(name)
    except InvalidModelNameError as exc:
        raise InvalidRequest(str(exc), param="model", code="invalid_model_name") from None


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, int | float) and not isinstance(value, bool) else value


def _at_most(values: Iterable[int], limit: int, param: str, setting: str) -> None:
    for value in values:
        require(
            value <= limit,
            param,
            f"{param} {value} exceeds this server's {setting} of {limit}",
            "limit_exceeded",
        )


def _unique(values: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def device_available(device: str) -> bool:
    if device in ("auto", "cpu"):
        return True
    if device == "mps":
        return bool(torch.backends.mps.is_available())
    if not torch.cuda.is_available():
        return False
    index = int(device.partition(":")[2] or 0)
    return index < torch.cuda.device_count()


# Requests -----------------------------------------------------------------------------------


class EngineBenchRequest(RequestModel):
    """Sweep batch x context x new tokens x mode x dtype on one device: one row each."""

    model_config = _STRICT
    kind: Literal["engine"] = "engine"
    model: str | None = Field(None, description="Registry name; default: the server's model.")
    template: str | None = Field(
        None,
        description="Benchmark an untrained model of this architecture template instead of a "
        "registered model (size hardware before training; not with `model`).",
    )
    batch_sizes: list[int] = Field([1], description="Sequences decoded together.")
    context_lengths: list[int] = Field([64, 256, 1024], description="Prompt bytes per sequence.")
    new_tokens: list[int] = Field(
        [16], description="Decode steps timed per measurement.", json_schema_extra=one_or_many
    )
    modes: list[Mode] = Field(["recurrent", "recompute"])
    dtypes: list[DType] = Field(["float32"])
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    repeats: int = Field(3, description=f"Timed measurements per row (1..{MAX_REPEATS}).")
    warmup: int = Field(
        1,
        description=f"Untimed measurements before the timed ones of each row (0..{MAX_WARMUP}); "
        "when > 0 each mode also runs once untimed after the model loads.",
    )
    recompute_max_context: int = Field(
        1024, description="Recompute rows beyond this context (+ new tokens) are skipped."
    )
    prefill_chunk: int = Field(256, description="Chunk size of the recurrent prefill.")
    bandwidth_mb: int = Field(256, description="Size of the copy that measures bandwidth.")
    seed: int = 0

    @field_validator("new_tokens", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return _as_list(value)

    @model_validator(mode="after")
    def _check(self) -> EngineBenchRequest:
        _check_model_name(self.model)
        if self.template is not None:
            require(self.model is None, "template", "give a model or a template, not both")
            require(
                self.template in TEMPLATES,
                "template",
                f"unknown template {self.template!r}; known: {', '.join(TEMPLATES)}",
                "unknown_template",
            )
        for param in ("batch_sizes", "context_lengths", "new_tokens", "modes", "dtypes"):
            _check_list(getattr(self, param), param)
            setattr(self, param, _unique(getattr(self, param)))
        _check_range(self.batch_sizes, "batch_sizes", 1, MAX_BATCH)
        _check_range(self.context_lengths, "context_lengths", 1, MAX_CONTEXT)
        _check_range(self.new_tokens, "new_tokens", 1, MAX_NEW_TOKENS)
        _check_range([self.repeats], "repeats", 1, MAX_REPEATS)
        _check_range([self.warmup], "warmup", 0, MAX_WARMUP)
        _check_range(
            [self.recompute_max_context], "recompute_max_context", 1, MAX_RECOMPUTE_CONTEXT
        )
        _check_range([self.prefill_chunk], "prefill_chunk", 1, MAX_PREFILL_CHUNK)
        _check_range([self.bandwidth_mb], "bandwidth_mb", 1, MAX_BANDWIDTH_MB)
        rows = self.row_count()
        require(
            rows <= MAX_ROWS,
            "batch_sizes",
            f"the sweep has {rows} rows; at most {MAX_ROWS} are allowed",
            "limit_exceeded",
        )
        require(
            bool(_DEVICE.match(self.device)),
            "device",
            f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}",
        )
        require(
            device_available(self.device),
            "device",
            f"device {self.device!r} is not available on this server",
            "device_unavailable",
        )
        submission = current_submission()
        if submission is not None:
            if self.template is None:
                self.model = self.model or submission.settings.model.default
            self.check_settings(submission.settings)
        return self

    def check_settings(self, settings: Settings) -> None:
        """Refuse (400) what this server's settings do not allow."""
        limits = settings.generation
        _at_most(self.batch_sizes, limits.max_batch, "batch_sizes", "generation.max_batch")
        _at_most(
            self.new_tokens, limits.max_tokens_limit, "new_tokens", "generation.max_tokens_limit"
        )

    def row_count(self) -> int:
        return math.prod(
            len(getattr(self, name))
            for name in ("batch_sizes", "context_lengths", "new_tokens", "modes", "dtypes")
        )


class ServingBenchRequest(RequestModel):
    """Load an OpenAI-compatible `/v1/completions` endpoint at several levels.

    Levels are every `concurrency` x `request_rate` pair. A rate draws Poisson arrivals at
    that many requests per second; without one, requests start as fast as the concurrency
    allows. A level without concurrency (null) lets every arrived request run at once.
    """

    model_config = _STRICT
    kind: Literal["serving"] = "serving"
    base_url: str | None = Field(
        None,
        description="OpenAI base URL (ending in /v1); default: this server's /v1, or on a "
        "server without one the generator's (services.generator_url).",
    )
    model: str | None = Field(None, description="Model name sent; default: the server's model.")
    concurrency: list[int] | None = Field([1], description="Maximum requests in flight.")
    request_rate: list[float] | None = Field(
        None,
        description="Poisson arrival rates (requests/s); null: as fast as allowed.",
        json_schema_extra=one_or_many,
    )
    num_requests: int = Field(32, description="Requests per level.")
    prompt_bytes: int = Field(128, description="Prompt length in bytes (= tokens).")
    max_tokens: int = Field(32, description="Tokens generated per request.")
    stream: bool = True
    temperature: float = Field(1.0, description="Sampling temperature (0..2).")
    seed: int = 0
    timeout_s: float = Field(120.0, description="Per-request timeout.")

    @field_validator("request_rate", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return _as_list(value)

    @model_validator(mode="after")
    def _check(self) -> ServingBenchRequest:
        _check_model_name(self.model)
        if self.base_url is not None:
            self.base_url = normalize_base_url(self.base_url)
        require(
            self.concurrency is not None or self.request_rate is not None,
            "concurrency",
            "give concurrency levels, request rates, or both",
        )
        if self.concurrency is not None:
            _check_list(self.concurrency, "concurrency")
            self.concurrency = _unique(self.concurrency)
            _check_range(self.concurrency, "concurrency", 1, MAX_CONCURRENCY)
        if self.request_rate is not None:
            _check_list(self.request_rate, "request_rate")
            self.request_rate = _unique(self.request_rate)
            for rate in self.request_rate:
                require(rate > 0, "request_rate", f"request_rate must be positive, got {rate}")
            _check_range(self.request_rate, "request_rate", 0, MAX_REQUEST_RATE)
        levels = len(self.levels())
        require(
            levels <= MAX_LEVELS,
            "concurrency",
            f"{levels} levels requested; at most {MAX_LEVELS} are allowed",
            "limit_exceeded",
        )
        _check_range([self.num_requests], "num_requests", 1, MAX_REQUESTS)
        _check_range([self.prompt_bytes], "prompt_bytes", 1, MAX_CONTEXT)
        _check_range([self.max_tokens], "max_tokens", 1, MAX_NEW_TOKENS)
        _check_range([self.timeout_s], "timeout_s", 0.1, MAX_TIMEOUT_S)
        _check_range([self.temperature], "temperature", 0.0, 2.0)
        submission = current_submission()
        if submission is not None:
            self.model = self.model or submission.settings.model.default
            if self.base_url is None and (
                submission.server_url is not None or not submission.serves_openai
            ):
                self.base_url = submission.openai_base_url()
            self.check_settings(submission.settings)
        return self

    def check_settings(self, settings: Settings) -> None:
        """Refuse (400) what this server's settings do not allow, the target host included."""
        limits = settings.generation
        _at_most(
            [self.max_tokens], limits.max_tokens_limit, "max_tokens", "generation.max_tokens_limit"
        )
        _at_most(
            [self.prompt_bytes],
            limits.max_prompt_bytes,
            "prompt_bytes",
            "generation.max_prompt_bytes",
        )
        check_url(self.target(settings), allowed_hosts(settings))

    def target(self, settings: Settings) -> str:
        """The OpenAI base URL to load: the one given, else this server's."""
        return self.base_url or default_base_url(settings)

    def levels(self) -> list[tuple[int | None, float | None]]:
        """(concurrency, request rate) per level; None means unbounded / as fast as allowed."""
        concurrencies: list[int | None] = [*self.concurrency] if self.concurrency else [None]
        rates: list[float | None] = [*self.request_rate] if self.request_rate else [None]
        return [(c, r) for c in concurrencies for r in rates]


def normalize_base_url(url: str) -> str:
    """An http(s) URL with a host and no credentials, query or fragment; no trailing slash."""
    require(len(url) <= 2048, "base_url", "base_url is too long", "limit_exceeded")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        raise InvalidRequest(
            f"base_url {url!r} is not a valid URL", param="base_url", code="invalid_url"
        ) from None
    require(
        parts.scheme in ("http", "https") and bool(parts.hostname),
        "base_url",
        f"base_url must be an http(s) URL with a host, got {url!r}",
        "invalid_url",
    )
    require(
        not (parts.username or parts.password or parts.query or parts.fragment),
        "base_url",
        "base_url must not carry credentials, a query or a fragment",
        "invalid_url",
    )
    return url.rstrip("/")


BenchmarkRequest = Annotated[EngineBenchRequest | ServingBenchRequest, Field(discriminator="kind")]
