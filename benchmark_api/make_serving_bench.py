"""`make bench`, serving section: concurrent streaming clients against a real server.

    python -m benchmark_api.make_serving_bench [--model bdh-shakespeare] [--levels 1,4,16]
        [--rounds 5] [--quick]

Starts the Generator (uvicorn, a subprocess, its own SQLite store in a temporary directory) on
the shipped model, then for each concurrency level runs the Benchmark component's level runner
(`run_level`): `--requests` streaming completions of `--max-tokens` tokens per client from
`/v1/completions`, at most one client's worth in flight each. The levels take turns,
`--rounds` times over. Reported per level: aggregate output tokens/s (the median over rounds
of `summarize_level`'s figure), TTFT and inter-token latency p50/p99 over all rounds. While the
highest level runs, a separate process polls `/health` and reports its p99 latency, next to the
same figure taken with the server idle. Every ratio compares numbers measured side by side in
this run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from rich.console import Console
from rich.table import Table

from benchmark_api.generator_process import REPO_ROOT, generator_process
from benchmark_api.results import LatencyStats, ServingLevel
from benchmark_api.serving_bench import (
    LoadSpec,
    RequestOutcome,
    latency_stats,
    probe_endpoint,
    run_level,
    summarize_level,
)

logger = logging.getLogger(__name__)
# Wide enough for the table when the output is not a terminal (make bench | tee ...).
console = Console(width=None if sys.stdout.isatty() else 132)

REPO_MODELS = REPO_ROOT / "models"
HEALTH_INTERVAL_S = 0.01
PROMPTS = ("ROMEO:", "JULIET:", "HAMLET:", "First Citizen:", "KING LEAR:", "MACBETH:")


@dataclass
class LevelRounds:
    """One concurrency level over the rounds: each round's summary and all outcomes."""

    clients: int
    rounds: list[ServingLevel] = field(default_factory=list)
    outcomes: list[RequestOutcome] = field(default_factory=list)
    health_s: list[float] = field(default_factory=list)

    def add_round(self, outcomes: list[RequestOutcome], duration_s: float) -> None:
        self.rounds.append(_summary(outcomes, duration_s, self.clients))
        self.outcomes += outcomes

    @property
    def tokens_per_s(self) -> float:
        """The median over rounds: a burst of neighbouring load spoils one round, not all."""
        return statistics.median(r.output_tokens_per_s for r in self.rounds) if self.rounds else 0.0

    def pooled(self) -> ServingLevel:
        """Every round's requests as one level (for the latency percentiles)."""
        return _summary(self.outcomes, sum(r.duration_s for r in self.rounds), self.clients)


def _summary(outcomes: list[RequestOutcome], duration_s: float, clients: int) -> ServingLevel:
    return summarize_level(outcomes, duration_s, concurrency=clients, request_rate=None)


# The server ------------------------------------------------------------------------------------


@contextlib.contextmanager
def serve_subprocess(
    model: str, models_dir: Path, port: int, threads: int | None, max_batch: int
) -> Iterator[str]:
    """The Generator in a subprocess with its own SQLite store; yields its URL once ready."""
    with tempfile.TemporaryDirectory(prefix="hatchery-bench-") as tmp:
        env = {
            "HATCHERY_MODEL__MODELS_DIR": str(models_dir),
            "HATCHERY_MODEL__DEFAULT": model,
            "HATCHERY_MODEL__PRELOAD": json.dumps([model]),
            "HATCHERY_STORE__URL": f"sqlite:///{tmp}/bench.db",
            "HATCHERY_DATA_DIR": tmp,
            "HATCHERY_GENERATION__MAX_BATCH": str(max(max_batch, 1)),
        }
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads
        with generator_process(env, port=port) as url:
            yield url


# The clients -----------------------------------------------------------------------------------


def _spec(url: str, args: argparse.Namespace) -> LoadSpec:
    return LoadSpec(
        completions_url=f"{url}/v1/completions",
        model=args.model,
        max_tokens=args.max_tokens,
        temperature=0.8,
        timeout_s=600.0,
    )


async def run_clients(
    url: str, clients: int, args: argparse.Namespace
) -> tuple[list[RequestOutcome], float]:
    """`clients` closed-loop clients, `args.requests` each: the level runner with
    `clients * requests` requests, all arriving at once, at most `clients` in flight; on one
    aiohttp connection pool, whose C-accelerated parsing keeps the client's share of the CPU
    small, so the server, not the client, is what is measured."""
    count = clients * args.requests
    prompts = [f"{PROMPTS[i % len(PROMPTS)]}\n" for i in range(count)]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        return await run_level(
            session,
            _spec(url, args),
            prompts,
            concurrency=clients,
            request_rate=None,
            seed=clients * 1000,
            should_stop=lambda: False,
        )


async def warm_up(url: str, args: argparse.Namespace) -> None:
    async with aiohttp.ClientSession() as session:
        await probe_endpoint(session, _spec(url, args), f"{PROMPTS[0]}\n", seed=0)


def health_latencies(url: str, more: Callable[[int], bool]) -> list[float]:
    """GET /health every 10 ms while `more(samples so far)`; the latencies (s)."""
    latencies: list[float] = []
    with httpx.Client(base_url=url, timeout=10) as client:
        while more(len(latencies)):
            started = time.perf_counter()
            client.get("/health").raise_for_status()
            latencies.append(time.perf_counter() - started)
            time.sleep(HEALTH_INTERVAL_S)
    return latencies


def _probe_process(url: str, started: Event, stop: Event, results: Any) -> None:
    """In its own process, so that its timing does not share the clients' GIL. At least one
    sample, even when the level ends before the first probe returns."""
    started.set()
    results.put(health_latencies(url, lambda samples: samples == 0 or not stop.is_set()))


def measure_level(url: str, level: LevelRounds, args: argparse.Namespace, probe: bool) -> None:
    """One round of `level`; with `probe`, /health is polled from another process meanwhile."""
    if not probe:
        level.add_round(*asyncio.run(run_clients(url, level.clients, args)))
        return
    context = multiprocessing.get_context("spawn")
    started, stop, queue = context.Event(), context.Event(), context.Queue()
    prober = context.Process(target=_probe_process, args=(url, started, stop, queue), daemon=True)
    prober.start()
    # The load starts once the prober runs: spawning it takes longer than a short level.
    if not started.wait(timeout=60):
        raise RuntimeError("the /health prober did not start")
    try:
        outcomes, duration = asyncio.run(run_clients(url, level.clients, args))
    finally:
        stop.set()
    level.health_s += queue.get(timeout=30)
    prober.join(timeout=10)
    level.add_round(outcomes, duration)


# Report -----------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def report(levels: list[LevelRounds], idle: LatencyStats, args: argparse.Namespace) -> None:
    table = Table(
        title=f"Serving: concurrent streaming clients ({args.model}, {args.max_tokens} tokens "
        f"per request, {args.requests} requests per client, {args.rounds} rounds; output tok/s "
        "is the median over rounds; latencies in ms, over all rounds)"
    )
    base_column = f"vs {levels[0].clients}"
    columns = ["clients", "requests", "errors", "output tok/s", base_column, "TTFT p50"]
    columns += ["TTFT p99", "ITL p50", "ITL p99", "/health p99"]
    for column in columns:
        table.add_column(column, justify="right")
    base = levels[0].tokens_per_s or 1.0
    for level in levels:
        pooled = level.pooled()
        table.add_row(
            str(level.clients),
            str(pooled.completed),
            str(pooled.errors),
            f"{level.tokens_per_s:,.0f}",
            f"{level.tokens_per_s / base:.2f}x",
            _ms(pooled.ttft_ms.p50),
            _ms(pooled.ttft_ms.p99),
            _ms(pooled.itl_ms.p50),
            _ms(pooled.itl_ms.p99),
            _ms(latency_stats(level.health_s).p99),
        )
    console.print(table)
    top = levels[-1]
    console.print(
        f"{top.clients} streams: {top.tokens_per_s / base:.2f}x the aggregate output tokens/s "
        f"of {levels[0].clients}; /health p99 {_ms(latency_stats(top.health_s).p99)} ms under "
        f"load ({len(top.health_s)} probes), {_ms(idle.p99)} ms idle"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--model", default="bdh-shakespeare")
    parser.add_argument("--models-dir", type=Path, default=REPO_MODELS)
    parser.add_argument("--levels", default="1,4,16", help="comma-separated client counts")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--requests", type=int, default=3, help="requests per client")
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds over all levels; tokens/s is the median"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads in the server (0: torch default)"
    )
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--quick", action="store_true", help="1 request of 64 tokens per client")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.max_tokens, args.rounds = 1, 64, 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    counts = [int(level) for level in args.levels.split(",")]
    if not (args.models_dir / args.model / "model.safetensors").is_file():
        console.print(f"[red]no model {args.model!r} in {args.models_dir}[/red]")
        raise SystemExit(1)
    with serve_subprocess(
        args.model, args.models_dir, args.port, args.threads or None, max(counts)
    ) as url:
        console.print(
            f"[bold]serving benchmark[/bold]: {args.model} at {url}, torch threads in the "
            f"server: {args.threads or 'default'}, {os.cpu_count()} CPUs"
        )
        asyncio.run(warm_up(url, args))
        idle = latency_stats(health_latencies(url, lambda samples: samples < 200))
        levels = [LevelRounds(clients=n) for n in counts]
        # Levels alternate within each round and the report takes medians over rounds, so
        # the machine's drifts and neighbours' bursts hit every level alike.
        for _ in range(args.rounds):
            for level in levels:
                measure_level(url, level, args, probe=level.clients == max(counts))
    report(levels, idle, args)


if __name__ == "__main__":
    main()
