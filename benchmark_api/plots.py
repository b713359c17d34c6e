"""Figures of benchmark results, drawn headless with matplotlib's Agg canvas.

Engine: decode tokens/s and time to first token against context length, one line per mode,
batch size and dtype, on log axes, with min-max bars over the repeats. Serving: latency
percentiles and throughput against the load levels. No pyplot: each figure is its own object,
so drawing from several threads at once is safe. Rendering is CPU work; routes call it in a
thread.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Sequence
from typing import Literal

from matplotlib import ticker
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from benchmark_api.results import EngineResult, EngineRow, ServingResult, Spread

PlotFormat = Literal["png", "svg"]
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "svg": "image/svg+xml"}
_LINESTYLES = {"p50": "-", "p90": "--", "p99": ":"}
# One colour per latency, one line style per percentile.
_LATENCIES = (
    ("ttft_ms", "TTFT", "tab:blue"),
    ("tpot_ms", "TPOT", "tab:green"),
    ("itl_ms", "ITL", "tab:purple"),
    ("e2e_ms", "E2E", "tab:red"),
)
_PLAIN = ticker.FuncFormatter(lambda value, _: f"{value:g}")


def render(result: EngineResult | ServingResult, fmt: PlotFormat, *, title: str = "") -> bytes:
    figure = engine_figure(result) if isinstance(result, EngineResult) else serving_figure(result)
    if title:
        figure.suptitle(title, fontsize=10)
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, dpi=110, metadata=_metadata(fmt))
    return buffer.getvalue()


def _metadata(fmt: PlotFormat) -> dict[str, str | None]:
    # Leave out creation dates so the same result always draws the same bytes.
    return {"Date": None} if fmt == "svg" else {"Software": "hatchery"}


# Engine ---------------------------------------------------------------------------------------


def engine_figure(result: EngineResult) -> Figure:
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    decode_axes, ttft_axes = figure.subplots(1, 2)
    rows = [row for row in result.rows if row.status == "measured"]
    if not rows:
        _empty(decode_axes, "no measured rows")
        _empty(ttft_axes, "")
        return figure
    lines = _engine_lines(rows)
    for label, line in lines.items():
        contexts = [row.context for row in line]
        _plot_spread(decode_axes, contexts, [row.decode_tokens_per_s for row in line], label)
        _plot_spread(ttft_axes, contexts, [row.ttft_ms for row in line], label)
    env = result.environment
    decode_axes.set_title(f"{result.model}: decode throughput ({env.device})")
    decode_axes.set_ylabel("decode tokens/s")
    ttft_axes.set_title("time to first token (prefill)")
    ttft_axes.set_ylabel("TTFT (ms)")
    for axes in (decode_axes, ttft_axes):
        axes.set_xscale("log", base=2)
        axes.set_yscale("log")
        _plain_log_labels(axes)
        axes.set_xlabel("context length (bytes)")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=7)
    return figure


def _plain_log_labels(axes: Axes) -> None:
    """64, 256, 1024 rather than 2^6, 2^8, 2^10 on log axes."""
    axes.xaxis.set_major_formatter(_PLAIN)
    axes.yaxis.set_major_formatter(_PLAIN)
    axes.yaxis.set_minor_formatter(ticker.NullFormatter())


def _engine_lines(rows: Sequence[EngineRow]) -> dict[str, list[EngineRow]]:
    """Rows grouped into lines (mode, batch, dtype, new tokens), each sorted by context."""
    vary_new = len({row.new_tokens for row in rows}) > 1
    vary_dtype = len({row.dtype for row in rows}) > 1
    lines: dict[str, list[EngineRow]] = defaultdict(list)
    for row in rows:
        label = f"{row.mode} b={row.batch_size}"
        label += f" {row.dtype}" if vary_dtype else ""
        label += f" new={row.new_tokens}" if vary_new else ""
        lines[label].append(row)
    return {label: sorted(line, key=lambda r: r.context) for label, line in sorted(lines.items())}


def _plot_spread(
    axes: Axes, xs: Sequence[float], spreads: Sequence[Spread | None], label: str
) -> None:
    points = [(x, s) for x, s in zip(xs, spreads, strict=True) if s is not None]
    medians = [s.median for _, s in points]
    errors = [
        [s.median - s.min for _, s in points],
        [s.max - s.median for _, s in points],
    ]
    axes.errorbar([x for x, _ in points], medians, yerr=errors, marker="o", capsize=3, label=label)


# Serving --------------------------------------------------------------------------------------


def serving_figure(result: ServingResult) -> Figure:
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    latency_axes, throughput_axes = figure.subplots(1, 2)
    levels = result.levels
    if not levels:
        _empty(latency_axes, "no finished levels")
        _empty(throughput_axes, "")
        return figure
    positions = list(range(len(levels)))
    labels = [level.label() for level in levels]
    for name, title, color in _LATENCIES:
        for percentile, style in _LINESTYLES.items():
            values = [getattr(getattr(level, name), percentile) for level in levels]
            if any(v is not None for v in values):
                ys = [float("nan") if v is None else v for v in values]
                latency_axes.plot(
                    positions, ys, style, color=color, marker="o", label=f"{title} {percentile}"
                )
    latency_axes.set_yscale("log")
    latency_axes.yaxis.set_major_formatter(_PLAIN)
    latency_axes.set_ylabel("latency (ms)")
    latency_axes.set_title(f"{result.model}: latency percentiles")
    latency_axes.legend(fontsize=6, ncol=2)

    output = [level.output_tokens_per_s for level in levels]
    requests = [level.request_throughput for level in levels]
    throughput_axes.bar(positions, output, color="tab:blue", alpha=0.6, label="output tokens/s")
    throughput_axes.set_ylabel("output tokens/s (bars)", color="tab:blue")
    twin = throughput_axes.twinx()
    twin.plot(positions, requests, "-s", color="tab:orange", label="requests/s")
    twin.set_ylabel("requests/s (line)", color="tab:orange")
    twin.set_ylim(bottom=0, top=max(requests) * 1.15 or 1)
    throughput_axes.set_title("throughput")
    for axes in (latency_axes, throughput_axes):
        axes.set_xticks(positions, labels, rotation=20, fontsize=8)
        axes.set_xlabel("load level (concurrency, arrival rate)")
        axes.grid(True, alpha=0.3)
    return figure


def _empty(axes: Axes, message: str) -> None:
    axes.text(0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes)
    axes.set_axis_off()
