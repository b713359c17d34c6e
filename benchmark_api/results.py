"""Benchmark results: engine rows, serving levels, their summaries, and comparisons.

`EngineResult` and `ServingResult` are what the jobs return (and save partially as they go);
`CompareResponse` is what `GET /api/benchmark/compare` answers.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

Mode = Literal["recurrent", "recompute"]


# Results ------------------------------------------------------------------------------------


class Spread(BaseModel):
    """A figure over repeated measurements."""

    median: float
    min: float
    max: float
    stdev: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(
            median=statistics.median(values),
            min=min(values),
            max=max(values),
            stdev=statistics.stdev(values) if len(values) > 1 else 0.0,
        )


class Environment(BaseModel):
    device: str
    device_name: str | None = None
    dtype: str
    dtypes: list[str] = Field(default_factory=list)
    torch_version: str
    python_version: str
    platform: str
    cores: int
    physical_cores: int | None = None
    torch_threads: int
    memory_total_gb: float | None = None
    bandwidth_gb_s: float | None = Field(None, description="Measured DRAM copy bandwidth.")
    read_bandwidth_gb_s: float | None = Field(None, description="Measured DRAM read bandwidth.")
    update_bandwidth_gb_s: float | None = Field(
        None, description="Measured DRAM in-place update bandwidth (bytes read plus written)."
    )
    matmul_peak_gflop_s: float | None = Field(
        None, description="Measured float32 matmul peak (the compute roofline)."
    )
    cache_mb: float | None = Field(None, description="Last-level cache the rows are sized by.")
    model: str
    untrained: bool = Field(
        False, description="The model is an untrained one of a template (sizing hardware)."
    )
    neuron_density: float | None = Field(
        None, description="Share of active neurons (xs > 0), of the first dtype's model."
    )
    pair_density: float | None = Field(
        None, description="Share of RoPE pairs with an active neuron: state rows touched."
    )
    product_density: float | None = Field(
        None, description="Share of non-zero xs * ys: decoder rows read."
    )
    parameters: int | None = None
    state_mb_per_sequence: float | None = None


class EngineRow(BaseModel):
    mode: Mode
    batch_size: int
    context: int
    new_tokens: int
    dtype: str
    device: str
    status: Literal["measured", "skipped", "failed"] = "measured"
    note: str | None = None
    repeats: int = 0
    prefill_tokens_per_s: Spread | None = None
    ttft_ms: Spread | None = Field(
        None,
        description="Time to first token; recurrent: the prefill up to the last logits, whose "
        "last chunk's state write follows the first token (see second_token_ms).",
    )
    second_token_ms: Spread | None = Field(
        None,
        description="The second token's latency; recurrent: the deferred state write of the "
        "prompt's last chunk plus the first decode step.",
    )
    tpot_ms: Spread | None = None
    decode_tokens_per_s: Spread | None = None
    peak_memory_mb: float | None = Field(
        None,
        description="CUDA: torch's peak allocation during the row; "
        "CPU: the server process's peak resident memory sampled during the row.",
    )
    state_memory_mb: float = Field(0.0, description="Recurrent state of the batch.")
    neuron_density: float | None = Field(None, description="Share of active neurons (xs > 0).")
    pair_density: float | None = Field(None, description="Share of state rows a token touches.")
    product_density: float | None = Field(None, description="Share of decoder rows read.")
    bytes_per_token: float = Field(
        0.0, description="Bytes a decoded token moves, from the measured activation density."
    )
    residency: Literal["cache", "dram"] | None = Field(
        None, description="Whether a decode step's working set fits the last-level cache."
    )
    working_set_mb: float | None = Field(None, description="What a step touches and reuses.")
    bandwidth_gb_s: float | None = Field(
        None, description="The limit of this row: DRAM bandwidth, or a copy of its footprint."
    )
    achieved_gb_s: float | None = Field(None, description="bytes_per_token x decode tokens/s.")
    roofline_fraction: float | None = Field(
        None, description="achieved_gb_s / bandwidth_gb_s (<= 1 unless the model is wrong)."
    )
    prefill_gflop_s: float | None = Field(None, description="Prefill FLOP/s achieved.")
    prefill_fraction: float | None = Field(
        None, description="prefill_gflop_s / the measured matmul peak."
    )

    def key(self) -> dict[str, Any]:
        """The parameters that identify the row across runs."""
        return {
            "mode": self.mode,
            "batch_size": self.batch_size,
            "context": self.context,
            "new_tokens": self.new_tokens,
            "dtype": self.dtype,
        }

    def label(self) -> str:
        return (
            f"{self.mode} b={self.batch_size} ctx={self.context} new={self.new_tokens} {self.dtype}"
        )


class RecomputeRatio(BaseModel):
    """How much slower recompute decodes than recurrent at the longest context run in both."""

    context: int
    batch_size: int
    dtype: str
    new_tokens: int
    tpot_ratio: float


class EngineSummary(BaseModel):
    complete: bool
    rows: int
    planned_rows: int
    measured: int
    skipped: int
    failed: int
    best_decode_tokens_per_s: float | None = None
    best_prefill_tokens_per_s: float | None = None
    max_roofline_fraction: float | None = None
    recompute_vs_recurrent: RecomputeRatio | None = None


class EngineResult(BaseModel):
    kind: Literal["engine"] = "engine"
    model: str
    rows: list[EngineRow]
    summary: EngineSummary
    environment: Environment


class LatencyStats(BaseModel):
    """Milliseconds over the samples of one level (null when there are none)."""

    count: int = 0
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    min: float | None = None
    max: float | None = None


class ServingLevel(BaseModel):
    concurrency: int | None
    request_rate: float | None
    num_requests: int
    completed: int
    errors: int
    duration_s: float
    request_throughput: float = Field(description="Completed requests per second.")
    output_tokens_per_s: float
    total_tokens_per_s: float
    input_tokens: int
    output_tokens: int
    ttft_ms: LatencyStats
    tpot_ms: LatencyStats
    itl_ms: LatencyStats
    e2e_ms: LatencyStats
    error_samples: list[str] = Field(default_factory=list)

    def key(self) -> dict[str, Any]:
        return {"concurrency": self.concurrency, "request_rate": self.request_rate}

    def label(self) -> str:
        parts = [f"c={self.concurrency if self.concurrency is not None else '∞'}"]
        if self.request_rate is not None:
            parts.append(f"{self.request_rate:g} req/s")
        return ", ".join(parts)


class ServingSummary(BaseModel):
    complete: bool
    levels: int
    planned_levels: int
    completed: int
    errors: int
    best_request_throughput: float | None = None
    best_output_tokens_per_s: float | None = None
    lowest_p99_ttft_ms: float | None = None


class ServingResult(BaseModel):
    kind: Literal["serving"] = "serving"
    model: str
    base_url: str
    stream: bool
    levels: list[ServingLevel]
    summary: ServingSummary
    environment: Environment


BenchmarkResult = EngineResult | ServingResult
RESULT_MODELS: dict[str, type[BaseModel]] = {"engine": EngineResult, "serving": ServingResult}


# Comparison ---------------------------------------------------------------------------------


class ComparedRun(BaseModel):
    id: str
    kind: str
    model: str | None
    status: str
    created_at: datetime
    environment: Environment | None


class ComparedRow(BaseModel):
    params: dict[str, Any] = Field(description="What matches the row across runs.")
    values: dict[str, dict[str, float | None]] = Field(description="run id -> metric -> value")
    ratios: dict[str, dict[str, float | None]] = Field(
        description="run id -> metric -> value / the baseline's value (first id)"
    )


class CompareResponse(BaseModel):
    kind: Literal["engine", "serving"]
    baseline: str
    runs: list[ComparedRun]
    metrics: list[str]
    rows: list[ComparedRow]
