"""Client commands of the ``hatchery`` CLI, on top of ``ApiClient``.

    hatchery test run smoke --model bdh-shakespeare        start, follow, print the report
    hatchery test status|results|watch RUN_ID
    hatchery bench run engine -o context_lengths=[64,256]  start, follow, print the rows
    hatchery bench results RUN_ID [--csv FILE]
    hatchery bench plot RUN_ID --output plot.png
    hatchery runs list [--component test] [--status failed]

Every command takes ``--url`` ($HATCHERY_URL) and ``--api-key`` ($HATCHERY_API_KEY) and
``--json`` for machine-readable output. Exit status: 0 done and fine, 1 the run failed (or a
test case did), 2 the request itself failed. ``test_app``, ``bench_app`` and ``runs_app``
are mounted into the ``hatchery`` command (``hatchery_cli``); ``app`` holds all three.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from clients import _render
from clients._base import DEFAULT_URL
from clients._progress import RunProgress, on_terminal
from clients.errors import HatcheryError
from clients.models import RunPublic, RunResults
from clients.sync import ApiClient

console = Console()
errors = Console(stderr=True)

test_app = typer.Typer(help="Run test suites on models, follow them, read their reports.")
bench_app = typer.Typer(help="Benchmark the engine or a serving endpoint; tables and plots.")
runs_app = typer.Typer(help="Runs of every component.")
app = typer.Typer(help="Hatchery client commands.", no_args_is_help=True)
app.add_typer(test_app, name="test")
app.add_typer(bench_app, name="bench")
app.add_typer(runs_app, name="runs")

Url = Annotated[str, typer.Option("--url", envvar="HATCHERY_URL", help="Server URL.")]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="HATCHERY_API_KEY", help="API key.", show_default=False),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
RunId = Annotated[str, typer.Argument(help="Run id.")]
Options = Annotated[
    list[str] | None,
    typer.Option(
        "--option", "-o", help="Request field as key=value; the value is read as JSON if it parses."
    ),
]
Watch = Annotated[bool, typer.Option(help="Follow the run to its end and print the results.")]
Timeout = Annotated[float | None, typer.Option(help="Stop following after this many seconds.")]
PollInterval = Annotated[float, typer.Option(help="Seconds between status polls.")]


@contextmanager
def _client(url: str, api_key: str | None) -> Iterator[ApiClient]:
    """A client for one command; request failures end the command with status 2."""
    try:
        # Results are printed from JSON: no need to import the components' models (and torch).
        with ApiClient(url, api_key=api_key, typed_results=False) as client:
            yield client
    except HatcheryError as exc:
        errors.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from exc
    except ValueError as exc:
        errors.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from exc


def parse_options(options: list[str] | None) -> dict[str, Any]:
    """``["steps=3", "modes=[\\"recurrent\\"]", "name=x"]`` -> request fields."""
    fields: dict[str, Any] = {}
    for option in options or []:
        key, sep, raw = option.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected key=value, got {option!r}", param_hint="--option")
        try:
            fields[key.strip()] = json.loads(raw)
        except ValueError:
            fields[key.strip()] = raw  # a bare string
    return fields


def _print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


def _print_run(run: RunPublic, as_json: bool) -> None:
    if as_json:
        _print_json(run.model_dump(mode="json"))
    else:
        console.print(_render.run_table(run))


def _finish(results: RunResults, as_json: bool) -> None:
    """Print the results and end with the exit status they deserve."""
    if as_json:
        _print_json(results.model_dump(mode="json"))
    else:
        _render.print_results(console, results)
    if not _render.outcome_ok(results):
        raise typer.Exit(1)


def _start(run: RunPublic, as_json: bool) -> None:
    if as_json:
        _print_json(run.model_dump(mode="json"))
    else:
        console.print(f"started {run.component} run [bold]{run.id}[/bold] ({run.kind})")


# hatchery test ------------------------------------------------------------------------------


@test_app.command("run")
def test_run(
    kind: Annotated[str, typer.Argument(help="smoke, consistency, quality, prompts, endpoint.")],
    model: Annotated[str | None, typer.Option(help="Model (default: the server's).")] = None,
    option: Options = None,
    watch: Watch = True,
    timeout: Timeout = None,
    poll_interval: PollInterval = 0.5,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Start a test suite; by default follow it and print the report."""
    fields = parse_options(option)
    with _client(url, api_key) as client:
        run = client.run_test(model, kind, **fields)
        if not watch:
            _start(run, as_json)
            return
        if not as_json:
            _start(run, as_json)
        results = client.monitor_test(run.id, poll_interval, timeout, progress=not as_json)
    _finish(results, as_json)


@test_app.command("status")
def test_status(
    run_id: RunId, url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False
) -> None:
    """Status of a test run."""
    with _client(url, api_key) as client:
        run = client.get_test_status(run_id)
    _print_run(run, as_json)


@test_app.command("results")
def test_results(
    run_id: RunId, url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False
) -> None:
    """The report of a finished test run."""
    with _client(url, api_key) as client:
        results = client.get_test_results(run_id)
    _finish(results, as_json)


@test_app.command("watch")
def test_watch(
    run_id: RunId, url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False
) -> None:
    """Follow a test run live (WebSocket): each case as it finishes, then the report."""
    with _client(url, api_key) as client:
        _follow_events(client.monitor_test_ws(run_id), f"test {run_id[:8]}", as_json)
        results = client.get_test_results(run_id)
    _finish(results, as_json)


def _follow_events(events: Iterator[Any], label: str, as_json: bool) -> None:
    with RunProgress(label, enabled=not as_json and on_terminal(), console=console) as bar:
        for event in events:
            if as_json:
                sys.stdout.write(event.model_dump_json() + "\n")
                continue
            bar.event(event)
            line = _render.event_line(event)
            if line is not None:
                console.print(line, highlight=False)


# hatchery bench -----------------------------------------------------------------------------


@bench_app.command("run")
def bench_run(
    kind: Annotated[str, typer.Argument(help="engine or serving.")],
    model: Annotated[str | None, typer.Option(help="Model (default: the server's).")] = None,
    option: Options = None,
    watch: Watch = True,
    timeout: Timeout = None,
    poll_interval: PollInterval = 0.5,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Start a benchmark; by default follow it and print its table."""
    fields = parse_options(option)
    if model is not None:
        fields["model"] = model
    with _client(url, api_key) as client:
        run = client.run_benchmark(kind, **fields)
        if not watch:
            _start(run, as_json)
            return
        if not as_json:
            _start(run, as_json)
        results = client.monitor_benchmark(run.id, poll_interval, timeout, progress=not as_json)
    _finish(results, as_json)


@bench_app.command("results")
def bench_results(
    run_id: RunId,
    csv: Annotated[
        Path | None, typer.Option("--csv", help="Also write the table as CSV ('-': stdout).")
    ] = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """The table of a finished benchmark."""
    with _client(url, api_key) as client:
        if csv is not None and str(csv) == "-":
            sys.stdout.write(client.get_benchmark_csv(run_id))
            return
        results = client.get_benchmark_results(run_id)
        if csv is not None:
            csv.write_text(client.get_benchmark_csv(run_id), encoding="utf-8")
            errors.print(f"wrote {csv}")
    _finish(results, as_json)


@bench_app.command("plot")
def bench_plot(
    run_id: RunId,
    output: Annotated[Path, typer.Option("--output", "-O", help="File to write: .png or .svg.")],
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Save the plot of a finished benchmark."""
    fmt = output.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg"):
        raise typer.BadParameter("the output file must end in .png or .svg", param_hint="--output")
    with _client(url, api_key) as client:
        image = client.get_benchmark_plot(run_id, format=fmt)
    output.write_bytes(image)
    console.print(f"wrote {output} ({len(image):,} bytes)")


# hatchery runs ------------------------------------------------------------------------------


@runs_app.command("list")
def runs_list(
    component: Annotated[str | None, typer.Option(help="test, generator or benchmark.")] = None,
    status: Annotated[str | None, typer.Option(help="queued, running, succeeded…")] = None,
    kind: Annotated[str | None, typer.Option(help="Run kind.")] = None,
    model: Annotated[str | None, typer.Option(help="Model name.")] = None,
    outcome: Annotated[
        str | None, typer.Option(help="passed or failed: finished test runs by their outcome.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """List runs, newest first."""
    with _client(url, api_key) as client:
        page = client.list_runs(
            component,
            status,
            kind,
            model,
            limit,
            offset,
            outcome,  # type: ignore[arg-type]
        )
    if as_json:
        _print_json(page.model_dump(mode="json"))
    else:
        console.print(_render.runs_table(page, console.width))


if __name__ == "__main__":
    app()
