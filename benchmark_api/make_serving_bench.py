"""`make bench`, serving section: concurrent streaming clients against a real server.

    python -m generator_api.serving_bench [--model bdh-shakespeare] [--levels 1,4,16]
        [--rounds 5] [--quick]

Starts the Generator (uvicorn, a subprocess, its own SQLite store in a temporary directory) on
the shipped model, then for each concurrency level runs that many clients, each streaming
`--requests` completions of `--max-tokens` tokens from `/v1/completions` one after another.
The levels take turns, `--rounds` times over. Reported per level: aggregate output tokens/s
(all completion tokens / wall time; the median over rounds), TTFT and inter-token latency
(gap between chunks with choices) p50/p99 over all rounds. The clients send and time their
requests with the Benchmark component's code (`benchmark_api.serving_bench`, on aiohttp).
While the highest level runs, a separate process polls `/health` and reports its p99 latency,
next to the same figure taken with the server idle. Every ratio compares numbers measured
side by side in this run.
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
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from rich.console import Console
from rich.table import Table

from benchmark_api.serving_bench import LoadSpec, send_completion

logger = logging.getLogger(__name__)
# Wide enough for the table when the output is not a terminal (make bench | tee ...).
console = Console(width=None if sys.stdout.isatty() else 132)

REPO_MODELS = Path(__file__).resolve().parents[1] / "models"
HEALTH_INTERVAL_S = 0.01


@dataclass
class LevelResult:
    clients: int
    seconds: float
    completion_tokens: int = 0
    requests: int = 0
    errors: int = 0
    ttft_s: list[float] = field(default_factory=list)
    itl_s: list[float] = field(default_factory=list)
    health_s: list[float] = field(default_factory=list)
    round_rates: list[float] = field(default_factory=list)  # tokens/s of each round

    @property
    def tokens_per_s(self) -> float:
        """The median over rounds; for a single round, its own rate."""
        if self.round_rates:
            return statistics.median(self.round_rates)
        return self.completion_tokens / self.seconds if self.seconds else 0.0

    def add_round(self, other: LevelResult) -> None:
        self.seconds += other.seconds
        self.completion_tokens += other.completion_tokens
        self.requests += other.requests
        self.errors += other.errors
        self.ttft_s += other.ttft_s
        self.itl_s += other.itl_s
        self.health_s += other.health_s
        self.round_rates.append(other.tokens_per_s)


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation; None without data."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[min(98, max(0, round(q) - 1))]


# The server ------------------------------------------------------------------------------------


@contextlib.contextmanager
def serve_subprocess(
    model: str, models_dir: Path, port: int, threads: int | None, max_batch: int
) -> Iterator[str]:
    """The Generator on 127.0.0.1:`port` in a subprocess; yields its URL once it is ready."""
    with tempfile.TemporaryDirectory(prefix="hatchery-bench-") as tmp:
        env = dict(os.environ)
        env.update(
            {
                "HATCHERY_MODEL__MODELS_DIR": str(models_dir),
                "HATCHERY_MODEL__DEFAULT": model,
                "HATCHERY_MODEL__PRELOAD": json.dumps([model]),
                "HATCHERY_STORE__URL": f"sqlite:///{tmp}/bench.db",
                "HATCHERY_DATA_DIR": tmp,
                "HATCHERY_GENERATION__MAX_BATCH": str(max(max_batch, 1)),
            }
        )
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads
        command = [sys.executable, "-m", "uvicorn", "--factory", "generator_api.app:create_app"]
        command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        process = subprocess.Popen(command, env=env, cwd=Path(__file__).resolve().parents[1])
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(url, process)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the server at {url} did not become ready in {timeout} s")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# The clients -----------------------------------------------------------------------------------


async def _client(
    session: aiohttp.ClientSession,
    spec: LoadSpec,
    index: int,
    requests: int,
    result: LevelResult,
) -> None:
    """One client: `requests` streaming completions, one after another."""
    for request in range(requests):
        prompt = f"{_PROMPTS[(index + request) % len(_PROMPTS)]}\n"
        outcome = await send_completion(session, spec, prompt, seed=index * 1000 + request)
        if not outcome.ok:
            result.errors += 1
            logger.warning("request failed: %s", outcome.error)
            continue
        result.requests += 1
        result.completion_tokens += outcome.output_tokens
        result.ttft_s.append(outcome.ttft_s)
        result.itl_s += outcome.itl_s


_PROMPTS = ("ROMEO:", "JULIET:", "HAMLET:", "First Citizen:", "KING LEAR:", "MACBETH:")


async def _run_level(url: str, clients: int, args: argparse.Namespace) -> LevelResult:
    """`clients` concurrent clients on one aiohttp connection pool (the Benchmark
    component's request code: C-accelerated parsing keeps the client's share of this
    machine's two cores small, so the server, not the client, is what is measured)."""
    spec = LoadSpec(
        completions_url=f"{url}/v1/completions",
        model=args.model,
        max_tokens=args.max_tokens,
        temperature=0.8,
        timeout_s=600.0,
    )
    result = LevelResult(clients=clients, seconds=0.0)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        started = time.perf_counter()
        await asyncio.gather(
            *(_client(session, spec, i, args.requests, result) for i in range(clients))
        )
        result.seconds = time.perf_counter() - started
    return result


def probe_health(url: str, stop: Event, results: Any) -> None:
    """In its own process: GET /health every 10 ms until `stop`; put the latencies."""
    latencies = []
    with httpx.Client(base_url=url, timeout=10) as client:
        while not stop.is_set():
            started = time.perf_counter()
            client.get("/health").raise_for_status()
            latencies.append(time.perf_counter() - started)
            time.sleep(HEALTH_INTERVAL_S)
    results.put(latencies)


def measure_level(url: str, clients: int, args: argparse.Namespace, probe: bool) -> LevelResult:
    if not probe:
        return asyncio.run(_run_level(url, clients, args))
    context = multiprocessing.get_context("spawn")
    stop, queue = context.Event(), context.Queue()
    prober = context.Process(target=probe_health, args=(url, stop, queue), daemon=True)
    prober.start()
    try:
        result = asyncio.run(_run_level(url, clients, args))
    finally:
        stop.set()
    result.health_s = queue.get(timeout=30)
    prober.join(timeout=10)
    return result


def idle_health(url: str, samples: int = 200) -> list[float]:
    latencies = []
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(samples):
            started = time.perf_counter()
            client.get("/health").raise_for_status()
            latencies.append(time.perf_counter() - started)
            time.sleep(HEALTH_INTERVAL_S)
    return latencies


# Report -----------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def report(results: list[LevelResult], idle: list[float], args: argparse.Namespace) -> None:
    table = Table(
        title=f"Serving: concurrent streaming clients ({args.model}, {args.max_tokens} tokens "
        f"per request, {args.requests} requests per client, {args.rounds} rounds; output tok/s "
        "is the median over rounds; latencies in ms, over all rounds)"
    )
    base_column = f"vs {results[0].clients}"
    columns = ["clients", "requests", "errors", "output tok/s", base_column, "TTFT p50"]
    columns += ["TTFT p99", "ITL p50", "ITL p99", "/health p99"]
    for column in columns:
        table.add_column(column, justify="right")
    base = results[0].tokens_per_s or 1.0
    for r in results:
        table.add_row(
            str(r.clients),
            str(r.requests),
            str(r.errors),
            f"{r.tokens_per_s:,.0f}",
            f"{r.tokens_per_s / base:.2f}x",
            _ms(percentile(r.ttft_s, 50)),
            _ms(percentile(r.ttft_s, 99)),
            _ms(percentile(r.itl_s, 50)),
            _ms(percentile(r.itl_s, 99)),
            _ms(percentile(r.health_s, 99)),
        )
    console.print(table)
    top = results[-1]
    console.print(
        f"{top.clients} streams: {top.tokens_per_s / base:.2f}x the aggregate output tokens/s "
        f"of {results[0].clients}; /health p99 {_ms(percentile(top.health_s, 99))} ms under "
        f"load ({len(top.health_s)} probes), {_ms(percentile(idle, 99))} ms idle"
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
    levels = [int(level) for level in args.levels.split(",")]
    if not (args.models_dir / args.model / "model.safetensors").is_file():
        console.print(f"[red]no model {args.model!r} in {args.models_dir}[/red]")
        raise SystemExit(1)
    port = args.port or _free_port()
    with serve_subprocess(
        args.model, args.models_dir, port, args.threads or None, max(levels)
    ) as url:
        console.print(
            f"[bold]serving benchmark[/bold]: {args.model} at {url}, torch threads in the "
            f"server: {args.threads or 'default'}, {os.cpu_count()} CPUs"
        )
        asyncio.run(_run_level(url, 1, argparse.Namespace(**{**vars(args), "requests": 1})))
        idle = idle_health(url)
        results = [LevelResult(clients=n, seconds=0.0) for n in levels]
        # Levels alternate within each round and the report takes medians over rounds, so
        # the machine's drifts and neighbours' bursts hit every level alike.
        for _ in range(args.rounds):
            for result in results:
                top = result.clients == max(levels)
                result.add_round(measure_level(url, result.clients, args, probe=top))
    report(results, idle, args)


if __name__ == "__main__":
    main()
