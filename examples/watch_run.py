"""Live progress of a run over its WebSocket, with the async client.

    python examples/watch_run.py --base-url http://127.0.0.1:8000            # a new smoke test
    python examples/watch_run.py --component generator --prompt "ROMEO:"     # tokens as they come
    python examples/watch_run.py --component test --run-id 3f2a...           # an existing run

The client resumes from the last event it saw if the connection drops, so nothing is missed
or shown twice; the stream ends with the run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from clients import AsyncApiClient, HatcheryError, RunEventPublic

console = Console()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--component", choices=["test", "generator", "benchmark"], default="test")
    parser.add_argument("--run-id", default=None, help="Watch this run instead of starting one.")
    parser.add_argument("--model", default=None, help="Model to use (default: the server's).")
    parser.add_argument("--suite", default="smoke", help="Test suite to start.")
    parser.add_argument("--prompt", default="ROMEO:", help="Prompt of a generator text run.")
    parser.add_argument("--max-tokens", type=int, default=32)
    return parser.parse_args(argv)


async def start(client: AsyncApiClient, args: argparse.Namespace) -> str:
    if args.run_id:
        return str(args.run_id)
    if args.component == "test":
        run = await client.run_test(args.model, args.suite)
    elif args.component == "generator":
        run = await client.generate_text(args.model, [args.prompt], max_tokens=args.max_tokens)
    else:
        run = await client.run_benchmark(
            "engine", model=args.model, context_lengths=[64], new_tokens=[8], repeats=1
        )
    console.print(f"started {run.component} run [bold]{run.id}[/bold] ({run.kind})")
    return run.id


def events_of(client: AsyncApiClient, component: str, run_id: str) -> AsyncIterator[RunEventPublic]:
    follow = {
        "test": client.monitor_test_ws,
        "generator": client.monitor_generation_ws,
        "benchmark": client.monitor_benchmark_ws,
    }[component]
    return follow(run_id)


def describe(event: RunEventPublic) -> str | None:
    """A line for the events worth one (tokens are printed as they are, without a line)."""
    data = event.data
    if event.type == "status":
        return f"[{event.seq}] status -> {data.get('status')}"
    if event.type == "case":
        return f"[{event.seq}] case {data.get('name')}: {data.get('status')}"
    if event.type == "metric":
        return f"[{event.seq}] {data.get('name')} = {data.get('value')}"
    if event.type == "error":
        return f"[{event.seq}] error {data.get('code')}: {data.get('message')}"
    return None


async def watch(client: AsyncApiClient, component: str, run_id: str) -> str:
    """Show the run's events as they come; returns its final status."""
    status = "unknown"
    percent = TextColumn("{task.percentage:>3.0f}%")
    columns = (TextColumn("{task.description}"), BarColumn(), percent)
    with Progress(*columns, TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task(f"{component} {run_id[:8]}", total=1.0)
        async for event in events_of(client, component, run_id):
            if event.type == "progress":
                message = event.data.get("message") or ""
                bar.update(task, completed=event.data.get("progress", 0.0), description=message)
            elif event.type == "token":
                bar.console.print(event.data.get("text", ""), end="", markup=False)
            elif (line := describe(event)) is not None:
                bar.console.print(line, markup=False, highlight=False)
            if event.type == "status":
                status = str(event.data.get("status"))
        if status == "succeeded":
            bar.update(task, completed=1.0)
    return status


async def main_async(args: argparse.Namespace) -> int:
    async with AsyncApiClient(args.base_url, api_key=args.api_key, typed_results=False) as client:
        run_id = await start(client, args)
        status = await watch(client, args.component, run_id)
        console.print(f"run {run_id} ended: [bold]{status}[/bold]")
    return 0 if status == "succeeded" else 1


def main(argv: list[str] | None = None) -> int:
    try:
        return asyncio.run(main_async(parse_args(argv)))
    except HatcheryError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
