"""What a benchmark derives from its rows and levels: summaries and `metric` events.

Pure functions: the jobs call them after every row or level, the tests call them directly.
A `metric` event carries the DESIGN fields {name, value, step, unit} plus `labels` (the row's
or level's parameters) and, where there is one, the spread or the percentiles behind `value`.
"""

from __future__ import annotations

from typing import Any

from benchmark_api.results import (
    EngineRow,
    EngineSummary,
    RecomputeRatio,
    ServingLevel,
    ServingSummary,
)

Event = tuple[str, dict[str, Any]]


_ROW_SPREADS = (
    ("decode_tokens_per_s", "tokens/s"),
    ("prefill_tokens_per_s", "tokens/s"),
    ("ttft_ms", "ms"),
    ("tpot_ms", "ms"),
)
_LEVEL_VALUES = (
    ("request_throughput", "requests/s"),
    ("output_tokens_per_s", "tokens/s"),
    ("errors", "requests"),
)
_LEVEL_LATENCIES = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")


def metric(name: str, value: float, step: int, unit: str, **extra: Any) -> Event:
    return ("metric", {"name": name, "value": value, "step": step, "unit": unit, **extra})


def row_metric_events(row: EngineRow, step: int) -> list[Event]:
    """Medians (with min and max) of a measured row, its roofline fraction and peak memory."""
    labels = row.key()
    events = []
    for name, unit in _ROW_SPREADS:
        spread = getattr(row, name)
        bounds = {"median": spread.median, "min": spread.min, "max": spread.max}
        events.append(metric(name, spread.median, step, unit, spread=bounds, labels=labels))
    if row.roofline_fraction is not None:
        events.append(
            metric("roofline_fraction", row.roofline_fraction, step, "fraction", labels=labels)
        )
    if row.peak_memory_mb is not None:
        events.append(metric("peak_memory_mb", row.peak_memory_mb, step, "MB", labels=labels))
    return events


def engine_summary(rows: list[EngineRow], *, planned: int, complete: bool) -> EngineSummary:
    measured = [r for r in rows if r.status == "measured"]
    decode = [r.decode_tokens_per_s.median for r in measured if r.decode_tokens_per_s]
    prefill = [r.prefill_tokens_per_s.median for r in measured if r.prefill_tokens_per_s]
    roofline = [r.roofline_fraction for r in measured if r.roofline_fraction is not None]
    return EngineSummary(
        complete=complete,
        rows=len(rows),
        planned_rows=planned,
        measured=len(measured),
        skipped=sum(r.status == "skipped" for r in rows),
        failed=sum(r.status == "failed" for r in rows),
        best_decode_tokens_per_s=max(decode, default=None),
        best_prefill_tokens_per_s=max(prefill, default=None),
        max_roofline_fraction=max(roofline, default=None),
        recompute_vs_recurrent=recompute_ratio(measured),
    )


def recompute_ratio(rows: list[EngineRow]) -> RecomputeRatio | None:
    """Recompute's TPOT over recurrent's at the longest context both modes measured."""
    by_key = {(r.mode, r.batch_size, r.context, r.new_tokens, r.dtype): r for r in rows}
    pairs = []
    for (mode, batch, length, new, dtype), slow in by_key.items():
        fast = by_key.get(("recurrent", batch, length, new, dtype))
        if mode == "recompute" and fast is not None and slow.tpot_ms and fast.tpot_ms:
            pairs.append((length, -batch, new, dtype, slow.tpot_ms.median / fast.tpot_ms.median))
    if not pairs:
        return None
    length, negative_batch, new, dtype, ratio = max(pairs, key=lambda p: (p[0], p[1], p[2]))
    return RecomputeRatio(
        context=length, batch_size=-negative_batch, dtype=dtype, new_tokens=new, tpot_ratio=ratio
    )


def level_metric_events(level: ServingLevel, step: int) -> list[Event]:
    """Throughputs and errors of a level, and p50 (with mean, p90, p99) of each latency."""
    labels = level.key()
    events = [
        metric(name, getattr(level, name), step, unit, labels=labels)
        for name, unit in _LEVEL_VALUES
    ]
    for name in _LEVEL_LATENCIES:
        stats = getattr(level, name)
        if stats.count:
            percentiles = {"mean": stats.mean, "p50": stats.p50, "p90": stats.p90, "p99": stats.p99}
            events.append(
                metric(name, stats.p50, step, "ms", percentiles=percentiles, labels=labels)
            )
    return events


def serving_summary(levels: list[ServingLevel], *, planned: int, complete: bool) -> ServingSummary:
    p99 = [lv.ttft_ms.p99 for lv in levels if lv.ttft_ms.p99 is not None]
    return ServingSummary(
        complete=complete,
        levels=len(levels),
        planned_levels=planned,
        completed=sum(lv.completed for lv in levels),
        errors=sum(lv.errors for lv in levels),
        best_request_throughput=max((lv.request_throughput for lv in levels), default=None),
        best_output_tokens_per_s=max((lv.output_tokens_per_s for lv in levels), default=None),
        lowest_p99_ttft_ms=min(p99, default=None),
    )
