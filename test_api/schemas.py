"""Test component schemas: one request model per suite, discriminated on ``kind``, and the report.

Every request names what it tests (``model``) and bounds the whole run (``timeout_s``); the
suites that load a registry model also take ``device`` and ``dtype`` (default: the server's
``model`` settings). Options left out take the defaults listed by ``GET /api/test/suites``.

Defaults that depend on the server — the model (``settings.model.default``) and, for the
endpoint suite, ``base_url`` (this server's ``/v1``) — are filled in at submission time when the
request arrives through the server (see ``core.api.submission``), so the stored run says exactly
what was tested; otherwise the job fills them in from the settings.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

import regex
from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator, model_validator

from core.api.outbound import UrlNotAllowed, allowed_hosts, check_url
from core.api.request_model import RequestModel
from core.api.submission import current_submission
from core.engine.sampling import MAX_STOP_STRINGS, SamplingParams
from core.store.models import TestOutcome

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]{1,2})?)$"
MAX_REGEX_LENGTH = 512
MAX_TIMEOUT_S = 24 * 3600.0

Dtype = Literal["float32", "bfloat16", "float16"]


class _Strict(RequestModel):
    model_config = ConfigDict(extra="forbid")


# Common fields ------------------------------------------------------------------------------


class SuiteRequest(_Strict):
    """Fields every suite takes."""

    timeout_s: float = Field(
        600.0,
        gt=0,
        le=MAX_TIMEOUT_S,
        description="The whole run fails with error code 'timeout' after this many seconds.",
    )


class ModelSuiteRequest(SuiteRequest):
    """Fields of the suites that load a model from the registry."""

    model: str | None = Field(
        None,
        pattern=MODEL_NAME_PATTERN,
        description="Registry name of the model under test (default: settings.model.default).",
    )
    device: str | None = Field(
        None,
        pattern=DEVICE_PATTERN,
        description="auto, cpu, cuda, cuda:N or mps (default: settings.model.device).",
    )
    dtype: Dtype | None = Field(None, description="Default: settings.model.dtype.")

    @model_validator(mode="after")
    def _default_model(self) -> ModelSuiteRequest:
        submission = current_submission()
        if self.model is None and submission is not None:
            self.model = submission.settings.model.default
        return self


# Suites -------------------------------------------------------------------------------------


class SmokeRequest(ModelSuiteRequest):
    """The model loads, its sizes agree with its config, it computes and generates."""

    kind: Literal["smoke"] = "smoke"
    prompt: str = Field("The ", min_length=1, max_length=2000)
    max_tokens: int = Field(16, ge=1, le=256)
    seed: int = Field(0, ge=0)
    serving_url: str | None = Field(
        None,
        max_length=2048,
        description="OpenAI base URL whose greedy completion the serving_path case compares "
        "with the model's own. Default: this server's engine; on a server without /v1, the "
        "generator's (services.generator_url) when one is configured.",
    )

    @model_validator(mode="after")
    def _serving_target(self) -> SmokeRequest:
        submission = current_submission()
        if submission is None:
            return self
        if self.serving_url is None and not submission.serves_openai:
            generator = submission.settings.services.generator_url
            self.serving_url = f"{generator}/v1" if generator else None
        if self.serving_url is not None:
            self.serving_url = check_url(self.serving_url, allowed_hosts(submission.settings))
        return self


class ConsistencyRequest(ModelSuiteRequest):
    """The recurrent (serving) form computes what the parallel (official) form computes."""

    kind: Literal["consistency"] = "consistency"
    lengths: list[Annotated[int, Field(ge=1, le=2048)]] = Field(
        default_factory=lambda: [1, 7, 64, 160], min_length=1, max_length=8
    )
    chunk_size: int = Field(16, ge=1, le=1024, description="Chunk size of the chunked prefill.")
    batch_size: int = Field(3, ge=2, le=16)
    generation_tokens: int = Field(16, ge=1, le=256)
    seed: int = Field(0, ge=0)
    atol: float | None = Field(None, gt=0, description="Override the dtype's absolute tolerance.")
    rtol: float | None = Field(None, ge=0, description="Override the dtype's relative tolerance.")
    bfloat16_bound: float | None = Field(
        None, gt=0, description="Override the float32-vs-bfloat16 drift bound."
    )


class QualityRequest(ModelSuiteRequest):
    """Bits per byte on held-out text against a threshold and a unigram baseline; samples."""

    kind: Literal["quality"] = "quality"
    text: str | None = Field(
        None,
        min_length=2,
        description="Held-out text (default: the validation split in the model's metadata).",
    )
    max_bits_per_byte: float | None = Field(
        None, gt=0, description="Threshold (default: metadata evaluation.max_bits_per_byte)."
    )
    max_bytes: int = Field(16384, ge=16, le=4_194_304, description="Evaluation budget in bytes.")
    block_size: int | None = Field(
        None, ge=8, le=4096, description="Window length (default: the training block size)."
    )
    batch_size: int = Field(8, ge=1, le=256)
    samples: int = Field(4, ge=0, le=32)
    sample_tokens: int = Field(128, ge=8, le=1024)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    seed: int = Field(0, ge=0)
    min_valid_utf8: float = Field(0.9, ge=0.0, le=1.0)
    max_repetition: float = Field(0.5, ge=0.0, le=1.0)
    repetition_ngram: int = Field(4, ge=1, le=32)


class Expectation(_Strict):
    """Exactly one of contains, not_contains, regex, exact."""

    contains: str | None = Field(None, min_length=1, max_length=10_000)
    not_contains: str | None = Field(None, min_length=1, max_length=10_000)
    regex: str | None = Field(None, min_length=1, max_length=MAX_REGEX_LENGTH)
    exact: str | None = Field(None, max_length=100_000)
    ignore_case: bool = False

    @field_validator("regex")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                regex.compile(pattern)
            except regex.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return pattern

    @model_validator(mode="after")
    def _exactly_one(self) -> Expectation:
        given = [name for name in self.kinds() if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of contains, not_contains, regex, exact")
        return self

    @staticmethod
    def kinds() -> tuple[str, ...]:
        return ("contains", "not_contains", "regex", "exact")

    def describe(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class PromptCase(_Strict):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f]+$")
    prompt: str = Field(min_length=1, max_length=65536)
    expect: Expectation
    max_tokens: int = Field(32, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1)
    seed: int | None = None
    stop: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, max_length=MAX_STOP_STRINGS
    )

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            stop=self.stop,
        )


class PromptsRequest(ModelSuiteRequest):
    """User cases: a prompt, sampling settings and an expectation about the text."""

    kind: Literal["prompts"] = "prompts"
    cases: list[PromptCase] = Field(min_length=1, max_length=100)

    @field_validator("cases")
    @classmethod
    def _unique_names(cls, cases: list[PromptCase]) -> list[PromptCase]:
        names = [case.name for case in cases]
        if len(set(names)) != len(names):
            raise ValueError("case names must be unique")
        return cases

    @model_validator(mode="after")
    def _within_limits(self) -> PromptsRequest:
        submission = current_submission()
        if submission is not None:
            limit = submission.settings.generation.max_tokens_limit
            for index, case in enumerate(self.cases):
                if case.max_tokens > limit:
                    raise ValueError(f"cases[{index}].max_tokens exceeds the limit of {limit}")
        return self


class EndpointRequest(SuiteRequest):
    """Conformance of an OpenAI-compatible API (default: this server's /v1)."""

    kind: Literal["endpoint"] = "endpoint"
    base_url: str | None = Field(
        None,
        max_length=2048,
        description="The API root, as given to OpenAI clients (e.g. http://127.0.0.1:8000/v1); "
        "its host must be in settings.outbound.allow_hosts. Default: this server's /v1, or "
        "on a server without one the generator's (services.generator_url).",
    )
    model: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="Model to request (default: the first listed).",
    )
    prompt: str = Field("Hello", min_length=1, max_length=2000)
    max_tokens: int = Field(8, ge=2, le=64)
    request_timeout_s: float = Field(30.0, gt=0, le=600)

    @model_validator(mode="after")
    def _allowed_url(self) -> EndpointRequest:
        submission = current_submission()
        if submission is None:
            return self  # not an HTTP submission: the job checks against its own settings
        if self.base_url is None:
            if submission.server_url is None and submission.serves_openai:
                raise UrlNotAllowed("cannot tell this server's address; give base_url")
            self.base_url = submission.openai_base_url()
        self.base_url = check_url(self.base_url, allowed_hosts(submission.settings))
        return self


TestRequest = Annotated[
    SmokeRequest | ConsistencyRequest | QualityRequest | PromptsRequest | EndpointRequest,
    Field(discriminator="kind"),
]
SuiteKind = Literal["smoke", "consistency", "quality", "prompts", "endpoint"]


# The report ---------------------------------------------------------------------------------


class CaseStatus(StrEnum):
    passed = "passed"
    failed = "failed"
    skipped = "skipped"
    errored = "errored"


class CaseResult(BaseModel):
    name: str
    status: CaseStatus
    duration_ms: float
    details: dict[str, Any] = Field(default_factory=dict)


class TestReport(BaseModel):
    """What a suite found. Failed cases do not fail the run: ``outcome`` says how it went."""

    __test__: ClassVar[bool] = False  # not a pytest test class, whatever its name

    suite: str
    model: str | None = None
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    errored: int = 0
    duration_ms: float = 0.0
    target: dict[str, Any] = Field(
        default_factory=dict, description="What was tested: device, dtype, base_url..."
    )
    cases: list[CaseResult] = Field(default_factory=list)

    def add(self, case: CaseResult) -> None:
        self.cases.append(case)
        setattr(self, case.status.value, getattr(self, case.status.value) + 1)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def outcome(self) -> TestOutcome:
        """``failed`` when any case failed or errored, else ``passed`` (skips do not fail)."""
        return "failed" if self.failed or self.errored else "passed"

    @property
    def ok(self) -> bool:
        return self.outcome == "passed"

    def summary(self) -> dict[str, Any]:
        """The ``result`` event's summary: counts and outcome, without the per-case details."""
        counts = self.model_dump(include={"suite", "model", "passed", "failed", "skipped"})
        extra = {"errored": self.errored, "outcome": self.outcome}
        return counts | extra | {"duration_ms": round(self.duration_ms, 1)}


# GET /api/test/suites -----------------------------------------------------------------------


class SuiteOption(BaseModel):
    name: str
    required: bool
    default: Any = None
    description: str | None = None
    json_schema: dict[str, Any] = Field(
        default_factory=dict, description="The option's JSON Schema."
    )


class SuiteInfo(BaseModel):
    kind: str
    description: str
    cases: list[str] = Field(description="Case names (a [...] suffix varies with the options).")
    options: list[SuiteOption]


class SuitesPublic(BaseModel):
    data: list[SuiteInfo]
    count: int
