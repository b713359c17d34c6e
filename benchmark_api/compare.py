"""Run-against-run comparison: rows matched by their parameters, with ratios to a baseline.

Engine rows match on (mode, batch size, context, new tokens, dtype); serving levels on
(concurrency, request rate). The device is not part of the key, so a CPU run and a GPU run of
the same sweep line up. The first run is the baseline: each ratio is another run's value over
the baseline's, so > 1 means more throughput (or more latency).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from benchmark_api.results import (
    ComparedRow,
    ComparedRun,
    CompareResponse,
    EngineResult,
    EngineRow,
    ServingLevel,
    ServingResult,
)
from benchmark_api.tables import LATENCIES
from core.errors import InvalidRequest

ENGINE_METRICS = (
    "decode_tokens_per_s",
    "prefill_tokens_per_s",
    "ttft_ms",
    "tpot_ms",
    "peak_memory_mb",
    "roofline_fraction",
)
SERVING_METRICS = (
    "request_throughput",
    "output_tokens_per_s",
    "errors",
    *(f"{name}_{part}" for name in LATENCIES for part in ("mean", "p50", "p90", "p99")),
)


@dataclass(frozen=True)
class RunResult:
    """One finished run and its parsed result."""

    id: str
    kind: str
    model: str | None
    status: str
    created_at: datetime
    result: EngineResult | ServingResult


def engine_metrics(row: EngineRow) -> dict[str, float | None]:
    values: dict[str, float | None] = {}
    for name in ENGINE_METRICS:
        value = getattr(row, name)
        values[name] = getattr(value, "median", value)
    return values


def serving_metrics(level: ServingLevel) -> dict[str, float | None]:
    values: dict[str, float | None] = {
        "request_throughput": level.request_throughput,
        "output_tokens_per_s": level.output_tokens_per_s,
        "errors": float(level.errors),
    }
    for name in LATENCIES:
        stats = getattr(level, name)
        for part in ("mean", "p50", "p90", "p99"):
            values[f"{name}_{part}"] = getattr(stats, part)
    return values


def _keyed(result: EngineResult | ServingResult) -> dict[str, tuple[dict[str, Any], Any]]:
    """Row key (as canonical JSON) -> (key, metrics), measured rows only."""
    keyed: dict[str, tuple[dict[str, Any], Any]] = {}
    if isinstance(result, EngineResult):
        for row in result.rows:
            if row.status == "measured":
                keyed[json.dumps(row.key(), sort_keys=True)] = (row.key(), engine_metrics(row))
    else:
        for level in result.levels:
            keyed[json.dumps(level.key(), sort_keys=True)] = (level.key(), serving_metrics(level))
    return keyed


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return value / base


def compare(runs: Sequence[RunResult]) -> CompareResponse:
    """Match rows of `runs` (first = baseline); every key seen in any run gets a row."""
    if len(runs) < 2:
        raise InvalidRequest("compare needs at least two runs", param="ids")
    kinds = {run.result.kind for run in runs}
    if len(kinds) > 1:
        raise InvalidRequest(
            f"cannot compare runs of different kinds ({', '.join(sorted(kinds))})",
            param="ids",
            code="incompatible_runs",
        )
    baseline = runs[0]
    keyed = {run.id: _keyed(run.result) for run in runs}
    order = list(dict.fromkeys(key for run in runs for key in keyed[run.id]))
    rows = []
    for key in order:
        present = {run.id: keyed[run.id][key] for run in runs if key in keyed[run.id]}
        params = next(iter(present.values()))[0]
        values = {run_id: metrics for run_id, (_, metrics) in present.items()}
        base = values.get(baseline.id)
        ratios = {
            run_id: {name: _ratio(value, base.get(name)) for name, value in metrics.items()}
            for run_id, metrics in values.items()
            if base is not None and run_id != baseline.id
        }
        rows.append(ComparedRow(params=params, values=values, ratios=ratios))
    kind = baseline.result.kind
    return CompareResponse(
        kind=kind,
        baseline=baseline.id,
        runs=[
            ComparedRun(
                id=run.id,
                kind=run.kind,
                model=run.model or run.result.model,
                status=run.status,
                created_at=run.created_at,
                environment=run.result.environment,
            )
            for run in runs
        ],
        metrics=list(ENGINE_METRICS if kind == "engine" else SERVING_METRICS),
        rows=rows,
    )
