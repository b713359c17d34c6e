"""`make bench`, serving section: concurrent streaming clients against a real server.

    python -m benchmark_api.make_serving_bench [--model bdh-shakespeare] [--levels 1,4,8,16]
        [--rounds 5] [--templates bdh-official] [--quick]

Starts the Generator (uvicorn, a subprocess, its own SQLite store in a temporary directory) on
the shipped model, then for each concurrency level runs the Benchmark component's level runner
(`run_level`): `--requests` streaming completions of `--max-tokens` tokens per client from
`/v1/completions`, at most one client's worth in flight each. The levels take turns,
`--rounds` times over. Reported per level: aggregate output tokens/s (the median over rounds
of `summarize_level`'s figure), TTFT and inter-token latency p50/p99 over all rounds. While the
highest level runs, a separate process polls `/health` and reports its p99 latency, next to the
same figure taken with the server idle.

The ceiling: each round first measures the engine's own decode throughput at the highest
level's batch size, in this process (the server idle meanwhile), on the same model, on the
same decode threads (one per core), at context 256 as `make bench`'s decode-vs-batch table
(`serving_cpu.EngineReference`); each level's tokens/s is reported against its median. And
where the cores went: per level, the CPU seconds of the load generator (this process), of the
/health prober, of the server's event-loop thread and of its other threads (the lanes), and
what the rest of the machine took meanwhile (on a shared machine, neighbours' work), as cores
busy over the level's wall time, and the server's CPU per output token beside the engine's.
Then the same for an untrained model of each of `--templates` (made in a temporary models
directory), at `--template-levels`. Every ratio compares numbers measured side by side in this
run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import http.client
import json
import logging
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import aiohttp
import torch
from rich.console import Console
from rich.table import Table

from benchmark_api.generator_process import REPO_ROOT, ServerProcess, generator_server
from benchmark_api.results import LatencyStats, ServingLevel
from benchmark_api.serving_bench import (
    LoadSpec,
    RequestOutcome,
    latency_stats,
    probe_endpoint,
    run_level,
    summarize_level,
)
from benchmark_api.serving_cpu import CpuClock, CpuShare, EngineReference, warm_up_engine
from core.engine import load_model
from core.engine.creation import create_model
from core.engine.registry import ModelRegistry
from core.engine.training import TrainingConfig

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
    cpu: CpuShare = field(default_factory=CpuShare)  # over all rounds

    def add_round(
        self, outcomes: list[RequestOutcome], duration_s: float, cpu: CpuShare | None = None
    ) -> None:
        self.rounds.append(_summary(outcomes, duration_s, self.clients))
        self.outcomes += outcomes
        if cpu is not None:
            self.cpu += cpu

    @property
    def output_tokens(self) -> int:
        return sum(r.output_tokens for r in self.rounds)

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
) -> Iterator[ServerProcess]:
    """The Generator in a subprocess with its own SQLite store; yields it once ready."""
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
        with generator_server(env, port=port) as server:
            yield server


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
    """GET /health every 10 ms while `more(samples so far)`; the latencies (s).

    On one kept-alive connection of the standard library's `http.client`: the prober shares
    the server's cores, and an HTTP client that does less per request leaves them more of
    them (httpx took about 0.1 of a core for this)."""
    latencies: list[float] = []
    address = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(
        address.hostname or "127.0.0.1", address.port, timeout=10
    )
    try:
        while more(len(latencies)):
            started = time.perf_counter()
            connection.request("GET", "/health")
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"/health answered {response.status}")
            latencies.append(time.perf_counter() - started)
            time.sleep(HEALTH_INTERVAL_S)
    finally:
        connection.close()
    return latencies


def _probe_process(url: str, started: Event, stop: Event, results: Any) -> None:
    """In its own process, so that its timing does not share the clients' GIL. At least one
    sample, even when the level ends before the first probe returns. Sends back the latencies
    and the CPU seconds the probing took."""
    started.set()
    cpu = time.process_time()
    latencies = health_latencies(url, lambda samples: samples == 0 or not stop.is_set())
    results.put((latencies, time.process_time() - cpu))


def measure_level(
    url: str,
    level: LevelRounds,
    args: argparse.Namespace,
    probe: bool,
    clock: CpuClock | None = None,
) -> None:
    """One round of `level`; with `probe`, /health is polled from another process meanwhile;
    with `clock`, the CPU the round took is added to the level's."""
    if not probe:
        if clock is not None:
            clock.lap()
        outcomes, duration = asyncio.run(run_clients(url, level.clients, args))
        level.add_round(outcomes, duration, clock.lap() if clock is not None else None)
        return
    context = multiprocessing.get_context("spawn")
    started, stop, queue = context.Event(), context.Event(), context.Queue()
    prober = context.Process(target=_probe_process, args=(url, started, stop, queue), daemon=True)
    prober.start()
    # The load starts once the prober runs: spawning it takes longer than a short level.
    if not started.wait(timeout=60):
        raise RuntimeError("the /health prober did not start")
    if clock is not None:
        clock.lap()
    try:
        outcomes, duration = asyncio.run(run_clients(url, level.clients, args))
    finally:
        stop.set()
    cpu = clock.lap() if clock is not None else None
    latencies, prober_s = queue.get(timeout=30)
    level.health_s += latencies
    prober.join(timeout=10)
    if cpu is not None:
        cpu = dataclasses.replace(cpu, prober_s=prober_s)
    level.add_round(outcomes, duration, cpu)


# Report -----------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def report(
    levels: list[LevelRounds],
    idle: LatencyStats,
    args: argparse.Namespace,
    engine: EngineReference | None = None,
) -> None:
    table = Table(
        title=f"Serving: concurrent streaming clients ({args.model}, {args.max_tokens} tokens "
        f"per request, {args.requests} requests per client, {args.rounds} rounds; output tok/s "
        "is the median over rounds; latencies in ms, over all rounds)"
    )
    ceiling = engine.median_tokens_per_s if engine is not None else 0.0
    base_column = f"vs {levels[0].clients}"
    columns = ["clients", "requests", "errors", "output tok/s", base_column]
    columns += ["vs engine"] if ceiling else []
    columns += ["TTFT p50", "TTFT p99", "ITL p50", "ITL p99", "/health p99"]
    for column in columns:
        table.add_column(column, justify="right")
    base = levels[0].tokens_per_s or 1.0
    for level in levels:
        pooled = level.pooled()
        row = [str(level.clients), str(pooled.completed), str(pooled.errors)]
        row += [f"{level.tokens_per_s:,.0f}", f"{level.tokens_per_s / base:.2f}x"]
        row += [f"{level.tokens_per_s / ceiling:.0%}"] if ceiling else []
        row += [_ms(pooled.ttft_ms.p50), _ms(pooled.ttft_ms.p99)]
        row += [_ms(pooled.itl_ms.p50), _ms(pooled.itl_ms.p99)]
        row += [_ms(latency_stats(level.health_s).p99)]
        table.add_row(*row)
    console.print(table)
    top = levels[-1]
    console.print(
        f"{top.clients} streams: {top.tokens_per_s / base:.2f}x the aggregate output tokens/s "
        f"of {levels[0].clients}; /health p99 {_ms(latency_stats(top.health_s).p99)} ms under "
        f"load ({len(top.health_s)} probes), {_ms(idle.p99)} ms idle"
    )
    if engine is not None and ceiling:
        console.print(
            f"engine alone, batch {engine.batch} (median of {len(engine.tokens_per_s)}, one "
            f"per round): {ceiling:,.0f} tok/s; {top.clients} streams reach "
            f"{top.tokens_per_s / ceiling:.0%} of it"
        )
    if any(level.cpu.wall_s for level in levels):
        cpu_report(levels, engine)


def cpu_report(levels: list[LevelRounds], engine: EngineReference | None) -> None:
    """Where the cores went, per level (all rounds): cores busy over the wall time, and CPU
    per output token against the engine's own."""
    cores = os.cpu_count() or 1
    table = Table(
        title=f"Where the {cores} cores went (cores busy over each level's wall time, all "
        "rounds; others: the rest of the machine meanwhile; CPU per output token in ms)"
    )
    columns = ["clients", "load generator", "/health prober", "server loop", "server lanes"]
    columns += ["ours", "others", "idle", "server ms/token", "engine ms/token", "engine / server"]
    for column in columns:
        table.add_column(column, justify="right")
    engine_ms = engine.median_cpu_s_per_token * 1000 if engine is not None else 0.0
    for level in levels:
        cpu, tokens = level.cpu, max(level.output_tokens, 1)
        server_ms = cpu.server_s * 1000 / tokens
        table.add_row(
            str(level.clients),
            f"{cpu.cores(cpu.client_s):.2f}",
            f"{cpu.cores(cpu.prober_s):.2f}" if cpu.prober_s else "-",
            f"{cpu.cores(cpu.loop_s):.2f}",
            f"{cpu.cores(cpu.engine_s):.2f}",
            f"{cpu.cores(cpu.ours_s):.2f}",
            f"{cpu.cores(cpu.others_s):.2f}",
            f"{max(cores - cpu.cores(max(cpu.machine_s, cpu.ours_s)), 0):.2f}",
            f"{server_ms:.3f}",
            f"{engine_ms:.3f}" if engine_ms else "-",
            f"{engine_ms / server_ms:.0%}" if engine_ms and server_ms else "-",
        )
    console.print(table)
    top = levels[-1].cpu
    others = top.client_s + top.prober_s
    console.print(
        f"at {levels[-1].clients} streams the load generator and the prober took "
        f"{top.cores(others):.2f} of the {cores} cores; the server "
        f"{top.cores(top.server_s):.2f} ({top.cores(top.loop_s):.2f} on its event loop); "
        f"other processes {top.cores(top.others_s):.2f}. "
        "'engine / server' is the engine's own CPU per token over the server's: the share of "
        "the engine's figure the server would reach with every core to itself"
    )


# Sections ---------------------------------------------------------------------------------------


def untrained_model(template: str, models_dir: Path) -> None:
    """An untrained model of `template`, registered under its template's name in
    `models_dir` (a temporary directory): its serving speed sizes hardware before training."""
    registry = ModelRegistry(models_dir, device="cpu")
    create_model(registry, name=template, template=template, corpus=None,
                 training=TrainingConfig(), dropout=0.0)  # fmt: skip


def section(args: argparse.Namespace, counts: list[int]) -> None:
    """One model: the engine reference and every level, in interleaved rounds; the report."""
    with serve_subprocess(
        args.model, args.models_dir, args.port, args.threads or None, max(counts)
    ) as server:
        console.rule(f"[bold]serving {args.model}")
        console.print(
            f"{args.model} at {server.url}, torch threads in the server and here: "
            f"{args.threads or 'default'}, {os.cpu_count()} CPUs"
        )
        lm = load_model(args.model, models_dir=args.models_dir, device="cpu")
        warm_up_engine(lm.model)
        asyncio.run(warm_up(server.url, args))
        idle = latency_stats(health_latencies(server.url, lambda samples: samples < 200))
        engine = EngineReference(batch=max(counts))
        levels = [LevelRounds(clients=n) for n in counts]
        clock = CpuClock(server.pid)
        # The engine and the levels alternate within each round and the report takes medians
        # over rounds, so the machine's drifts and neighbours' bursts hit every figure alike.
        for _ in range(args.rounds):
            engine.measure(lm.model, steps=args.engine_steps)
            for level in levels:
                measure_level(
                    server.url, level, args, probe=level.clients == max(counts), clock=clock
                )
        del lm
    report(levels, idle, args, engine)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--model", default="bdh-shakespeare")
    parser.add_argument("--models-dir", type=Path, default=REPO_MODELS)
    parser.add_argument("--levels", default="1,4,8,16", help="comma-separated client counts")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--requests", type=int, default=3, help="requests per client")
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds over all levels; tokens/s is the median"
    )
    parser.add_argument(
        "--engine-steps", type=int, default=32, help="decode steps per engine measurement"
    )
    parser.add_argument("--templates", default="bdh-official", help="comma-separated; '' for none")
    parser.add_argument("--template-levels", default="1,4,8")
    parser.add_argument(
        "--template-max-tokens", type=int, default=32, help="per request, untrained models"
    )
    parser.add_argument("--template-rounds", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads in the server (0: torch default)"
    )
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--quick", action="store_true", help="1 request of 64 tokens per client")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.max_tokens, args.rounds = 1, 64, 1
        args.template_rounds, args.template_max_tokens = 1, 16
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)  # the engine reference runs here, as the server
    if not (args.models_dir / args.model / "model.safetensors").is_file():
        console.print(f"[red]no model {args.model!r} in {args.models_dir}[/red]")
        raise SystemExit(1)
    section(args, [int(level) for level in args.levels.split(",")])
    for template in filter(None, args.templates.split(",")):
        with tempfile.TemporaryDirectory(prefix="hatchery-bench-models-") as models:
            untrained_model(template, Path(models))
            template_args = argparse.Namespace(**vars(args))
            template_args.model, template_args.models_dir = template, Path(models)
            template_args.max_tokens = args.template_max_tokens
            template_args.rounds, template_args.requests = args.template_rounds, 1
            template_args.engine_steps = min(args.engine_steps, 8)
            section(template_args, [int(level) for level in args.template_levels.split(",")])


if __name__ == "__main__":
    main()
