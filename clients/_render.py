"""Rich tables for the CLI: runs, run pages, and the results of each component.

Results are read as plain JSON (the CLI does not import the components), so one renderer per
result shape: test reports, engine rows, serving levels, text completions, created models.
Anything else is printed as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from clients.models import RunEventPublic, RunPublic, RunResults, RunsPublic

STATUS_STYLES = {
    "succeeded": "green",
    "passed": "green",
    "failed": "red",
    "errored": "red",
    "cancelled": "yellow",
    "skipped": "yellow",
    "running": "cyan",
    "queued": "dim",
}


def styled(status: str) -> str:
    style = STATUS_STYLES.get(status, "")
    return f"[{style}]{escape(status)}[/{style}]" if style else escape(status)


def number(value: Any) -> str:
    """Compact figures: 12,346 / 29.7 / 0.0163; spreads {median, min, max} by their median."""
    if isinstance(value, dict):
        value = value.get("median")
    if value is None:
        return "-"
    if isinstance(value, float):
        size = abs(value)
        if size >= 100:
            return f"{value:,.0f}"
        return f"{value:.1f}" if size >= 1 else f"{value:.3g}"
    return str(value)


def timestamp(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")


def run_table(run: RunPublic) -> Table:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows = {
        "id": run.id,
        "component": run.component,
        "kind": run.kind,
        "model": run.model or "-",
        "status": styled(run.status.value),
        "progress": f"{run.progress:.0%}",
        "message": escape(run.message or "-"),
        "created": timestamp(run.created_at),
        "elapsed": f"{run.elapsed_s:.1f} s" if run.elapsed_s is not None else "-",
        "eta": f"{run.eta_s:.1f} s" if run.eta_s is not None else "-",
        "attempts": str(run.attempts),
    }
    if run.outcome is not None:
        rows["outcome"] = styled(run.outcome)
    if run.error is not None:
        rows["error"] = f"[red]{escape(run.error.code)}[/red]: {escape(run.error.message)}"
    for key, value in rows.items():
        table.add_row(key, value)
    return table


# Most wanted first: a narrow terminal drops columns from the end of this list, never cuts one.
_RUN_PRIORITY = ("id", "status", "outcome", "kind", "created", "model", "component", "progress")
_RUN_ORDER = ("id", "component", "kind", "model", "status", "outcome", "progress", "created")
_STYLED = ("status", "outcome")
_COLUMN_CHROME = 3  # a column's padding and border; the table adds one more


def runs_table(page: RunsPublic, width: int = 200) -> Table:
    """The runs in as many whole columns as fit in `width`: the full id always (other
    commands take it), then status, kind, creation time (without seconds and year when
    narrow), model, component and progress while there is room."""
    short = width < 110
    cells = [
        {
            "id": run.id,
            "component": run.component,
            "kind": run.kind,
            "model": run.model or "-",
            "status": run.status.value,
            "outcome": run.outcome or "-",
            "progress": f"{run.progress:.0%}",
            "created": run.created_at.strftime("%m-%d %H:%M")
            if short
            else timestamp(run.created_at),
        }
        for run in page.data
    ]
    chosen, used = set(), 1
    for column in _RUN_PRIORITY:
        needed = max([len(column), *(len(row[column]) for row in cells)]) + _COLUMN_CHROME
        if used + needed <= width or column == "id":
            chosen.add(column)
            used += needed
    columns = [column for column in _RUN_ORDER if column in chosen]
    table = Table(title=f"{len(page.data)} of {page.count} runs")
    for column in columns:
        table.add_column(column, no_wrap=True)
    for row in cells:
        table.add_row(
            *(styled(row[c]) if c in ("status", "outcome") else escape(row[c]) for c in columns)
        )
    return table


def event_line(event: RunEventPublic) -> str | None:
    """One line for the events worth a line of their own while watching a run."""
    data = event.data
    if event.type == "case":
        duration = number(data.get("duration_ms"))
        return f"{styled(str(data.get('status')))} {escape(str(data.get('name')))} ({duration} ms)"
    if event.type == "log":
        return f"[dim]{escape(str(data.get('level')))}: {escape(str(data.get('message')))}[/dim]"
    if event.type == "error":
        return f"[red]error {escape(str(data.get('code')))}: {escape(str(data.get('message')))}"
    if event.type == "attempt":
        reason = escape(str(data.get("reason")))
        return f"[yellow]attempt {data.get('attempt')} starts ({reason}); earlier output is void"
    if event.type == "metric":
        unit = data.get("unit") or ""
        return f"[dim]{escape(str(data.get('name')))} = {number(data.get('value'))} {unit}"
    if event.type == "status" and data.get("outcome"):  # a test run's verdict, as it ends
        return f"outcome {styled(str(data['outcome']))}"
    return None


def print_results(console: Console, results: RunResults) -> None:
    run = results.run
    verdict = f", outcome {styled(run.outcome)}" if run.outcome else ""
    console.print(f"run {run.id} ({run.component} {run.kind}): {styled(run.status.value)}{verdict}")
    if run.error is not None:
        console.print(f"[red]{escape(run.error.code)}[/red]: {escape(run.error.message)}")
    result = results.result_dict()
    if result is None:
        return
    render = _RENDERERS.get((run.component, run.kind)) or _RENDERERS.get((run.component, None))
    if render is None:
        console.print_json(json.dumps(result))
    else:
        render(console, result)


def outcome_ok(results: RunResults) -> bool:
    """Succeeded, and for a test run: outcome passed (no failed or errored case)."""
    return results.passed


def _test_report(console: Console, report: dict[str, Any]) -> None:
    table = Table(title=f"{report.get('suite')} on {report.get('model')}")
    for column in ("case", "status", "ms", "details"):
        table.add_column(column, overflow="fold")
    for case in report.get("cases", []):
        details = json.dumps(case.get("details") or {}, ensure_ascii=False)
        table.add_row(
            escape(str(case.get("name"))),
            styled(str(case.get("status"))),
            number(case.get("duration_ms")),
            escape(details[:120]),
        )
    console.print(table)
    outcomes = ("passed", "failed", "skipped", "errored")
    counts = ", ".join(f"{report.get(outcome, 0)} {outcome}" for outcome in outcomes)
    verdict = styled(str(report.get("outcome", "?")))
    console.print(f"outcome {verdict}: {counts} in {number(report.get('duration_ms'))} ms")


def _engine_rows(console: Console, result: dict[str, Any]) -> None:
    columns = {
        "mode": "mode",
        "batch_size": "batch",
        "context": "ctx",
        "new_tokens": "new",
        "dtype": "dtype",
        "status": "status",
        "prefill_tokens_per_s": "prefill/s",
        "ttft_ms": "TTFT",
        "tpot_ms": "TPOT",
        "decode_tokens_per_s": "decode/s",
        "peak_memory_mb": "MB",
        "roofline_fraction": "roof",
    }
    title = f"engine benchmark of {result.get('model')} (tokens/s, ms, peak MB, roofline)"
    _table(console, title, result.get("rows", []), columns)


def _serving_levels(console: Console, result: dict[str, Any]) -> None:
    columns = {
        "concurrency": "concurrency",
        "request_rate": "req/s in",
        "completed": "done",
        "errors": "errors",
        "request_throughput": "req/s",
        "output_tokens_per_s": "out tok/s",
        "ttft_ms.p50": "TTFT p50",
        "ttft_ms.p99": "TTFT p99",
        "tpot_ms.p50": "TPOT p50",
        "itl_ms.p50": "ITL p50",
        "e2e_ms.p99": "E2E p99",
    }
    title = f"serving benchmark of {result.get('model')} at {result.get('base_url')}"
    _table(console, title, result.get("levels", []), columns)


def _completions(console: Console, result: dict[str, Any]) -> None:
    columns = {
        "prompt_index": "prompt",
        "index": "choice",
        "finish_reason": "finish",
        "text": "text",
    }
    _table(console, f"completions by {result.get('model')}", result.get("completions", []), columns)


def _created_model(console: Console, result: dict[str, Any]) -> None:
    metrics = result.get("metrics") or {}
    rows = [{"name": key, "value": value} for key, value in metrics.items()]
    title = f"{result.get('name')} ({result.get('template')}, {result.get('parameters')} params)"
    _table(console, title, rows, {"name": "metric", "value": "value"})


def _table(
    console: Console, title: str, rows: Sequence[dict[str, Any]], columns: dict[str, str]
) -> None:
    """Rows as tables that fit the console: when all columns do not fit, the rest continue
    in further tables, each led by the first column so that rows can be matched up."""
    cells = [{key: number(_dig(row, key)) for key in columns} for row in rows]
    for part, keys in enumerate(_column_groups(columns, cells, console.width)):
        table = Table(title=escape(title) if part == 0 else None)
        for key in keys:
            # Figures stay on one line; only free text may fold onto several.
            table.add_column(columns[key], no_wrap=key not in _FOLDING, overflow="fold")
        for row in cells:
            table.add_row(*(escape(row[key]) for key in keys))
        console.print(table)


def _column_groups(
    columns: dict[str, str], cells: Sequence[dict[str, str]], width: int
) -> list[list[str]]:
    def needed(key: str) -> int:
        natural = max([len(columns[key]), *(len(row[key]) for row in cells)])
        # Free text folds, so it claims a share of the line rather than its whole length.
        return (min(natural, max(12, width // 3)) if key in _FOLDING else natural) + 3

    lead, *rest = list(columns)
    groups: list[list[str]] = [[lead]]
    used = 1 + needed(lead)
    for key in rest:
        if used + needed(key) > width and len(groups[-1]) > 1:
            groups.append([lead])
            used = 1 + needed(lead)
        groups[-1].append(key)
        used += needed(key)
    return groups


_FOLDING = frozenset({"text", "name", "value"})


def _dig(row: dict[str, Any], dotted: str) -> Any:
    value: Any = row
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


_RENDERERS: dict[tuple[str, str | None], Callable[[Console, dict[str, Any]], None]] = {
    ("test", None): _test_report,
    ("benchmark", "engine"): _engine_rows,
    ("benchmark", "serving"): _serving_levels,
    ("generator", "text"): _completions,
    ("generator", "model"): _created_model,
}
