"""Results as flat tables: one record per engine row or serving level, for CSV and comparison.

Spreads flatten to `<name>` (the median), `<name>_min`, `<name>_max` and `<name>_stdev`;
latency statistics to `<name>_mean`, `<name>_p50`, ... so every column is one number or label.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from benchmark_api.results import (
    EngineResult,
    EngineRow,
    LatencyStats,
    ServingLevel,
    ServingResult,
    Spread,
)

Record = dict[str, Any]

ENGINE_SPREADS = ("prefill_tokens_per_s", "ttft_ms", "tpot_ms", "decode_tokens_per_s")
ENGINE_VALUES = (
    "peak_memory_mb",
    "state_memory_mb",
    "pair_density",
    "product_density",
    "bytes_per_token",
    "residency",
    "working_set_mb",
    "bandwidth_gb_s",
    "achieved_gb_s",
    "roofline_fraction",
    "prefill_gflop_s",
    "prefill_fraction",
)
SERVING_VALUES = (
    "num_requests",
    "completed",
    "errors",
    "duration_s",
    "request_throughput",
    "output_tokens_per_s",
    "total_tokens_per_s",
    "input_tokens",
    "output_tokens",
)
LATENCIES = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")
STATISTICS = ("mean", "p50", "p90", "p99", "min", "max")


def engine_record(row: EngineRow) -> Record:
    record: Record = {**row.key(), "device": row.device, "status": row.status}
    record["repeats"] = row.repeats
    for name in ENGINE_SPREADS:
        spread: Spread | None = getattr(row, name)
        record[name] = spread.median if spread else None
        for part in ("min", "max", "stdev"):
            record[f"{name}_{part}"] = getattr(spread, part) if spread else None
    record.update({name: getattr(row, name) for name in ENGINE_VALUES})
    record["note"] = row.note
    return record


def serving_record(level: ServingLevel) -> Record:
    record: Record = {**level.key()}
    record.update({name: getattr(level, name) for name in SERVING_VALUES})
    for name in LATENCIES:
        stats: LatencyStats = getattr(level, name)
        record.update({f"{name}_{part}": getattr(stats, part) for part in STATISTICS})
    record["error_samples"] = " | ".join(level.error_samples)
    return record


def records(result: EngineResult | ServingResult) -> list[Record]:
    if isinstance(result, EngineResult):
        return [engine_record(row) for row in result.rows]
    return [serving_record(level) for level in result.levels]


def columns(result: EngineResult | ServingResult) -> list[str]:
    """The header, also for a result without rows (from an empty template record)."""
    if isinstance(result, EngineResult):
        template = EngineRow(
            mode="recurrent", batch_size=1, context=1, new_tokens=1, dtype="", device=""
        )
        return list(engine_record(template))
    empty = LatencyStats()
    level = ServingLevel(
        concurrency=None,
        request_rate=None,
        num_requests=0,
        completed=0,
        errors=0,
        duration_s=0,
        request_throughput=0,
        output_tokens_per_s=0,
        total_tokens_per_s=0,
        input_tokens=0,
        output_tokens=0,
        ttft_ms=empty,
        tpot_ms=empty,
        itl_ms=empty,
        e2e_ms=empty,
    )
    return list(serving_record(level))


def to_csv(result: EngineResult | ServingResult) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns(result), lineterminator="\n")
    writer.writeheader()
    for record in records(result):
        writer.writerow({k: "" if v is None else _cell(v) for k, v in record.items()})
    return buffer.getvalue()


def _cell(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value
