"""`make bench`, scale-out section: two API replicas on one store, jobs local or on Ray.

    python -m benchmark_api.scaleout_bench [--runs 3] [--tokens 300] [--cancels 5] [--quick]

Starts two Generator replicas (uvicorn subprocesses) on one store: PostgreSQL when
``HATCHERY_BENCH_DATABASE_URL`` (or ``HATCHERY_TEST_DATABASE_URL``) is set, in a scratch
schema, else a SQLite file. Topology ``local``: replica A runs the jobs, replica B only serves
the API (``executor.concurrency`` 0). Topology ``ray``: both dispatch to a local Ray head
(``benchmark_api.ray_head``, 2 CPUs) whose actors run the jobs.

Measured per topology, with text runs on the shipped model created on A:
- event latency: for every event, its receipt by a WebSocket follower minus the time the
  writer stamped on it (``ts``); followers on A and on B (B is always another process than the
  writer; on A too with Ray);
- cancel latency: a cancel sent to B while the run streams, until the follower on B receives
  the terminal ``cancelled`` event;
- recovery (ray): SIGKILL of the worker mid-run, until the ``attempt`` event and until the
  retry's first token.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table
from websockets.sync.client import connect

from benchmark_api.generator_process import REPO_ROOT, generator_process
from benchmark_api.ray_head import local_ray_head
from benchmark_api.serving_bench import latency_stats

console = Console(width=None if sys.stdout.isatty() else 132)
MODEL = "bdh-shakespeare"
TERMINAL = {"succeeded", "failed", "cancelled"}


@dataclass
class Figures:
    topology: str
    latency_a: list[float] = field(default_factory=list)  # seconds, follower on A
    latency_b: list[float] = field(default_factory=list)  # seconds, follower on B
    cancels: list[float] = field(default_factory=list)
    recovery_marker: list[float] = field(default_factory=list)
    recovery_token: list[float] = field(default_factory=list)


# Servers ------------------------------------------------------------------------------


@contextlib.contextmanager
def replica(env: dict[str, str], log: Path) -> Iterator[str]:
    with generator_process(env, log=log) as url:
        yield url


@contextlib.contextmanager
def bench_store(tmp: Path) -> Iterator[tuple[str, str]]:
    """(store URL, label): a scratch PostgreSQL schema if a server is configured, else SQLite."""
    base = os.environ.get("HATCHERY_BENCH_DATABASE_URL") or os.environ.get(
        "HATCHERY_TEST_DATABASE_URL"
    )
    if not base:
        yield f"sqlite:///{tmp / 'hatchery.db'}", "SQLite (poll)"
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, poolclass=NullPool)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False), "PostgreSQL (LISTEN/NOTIFY)"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def replica_env(store_url: str, tmp: Path, *, runs_jobs: bool, ray: str | None) -> dict[str, str]:
    env = {
        "HATCHERY_STORE__URL": store_url,
        "HATCHERY_MODEL__MODELS_DIR": str(REPO_ROOT / "models"),
        "HATCHERY_MODEL__DEFAULT": MODEL,
        "HATCHERY_MODEL__PRELOAD": json.dumps([MODEL] if runs_jobs and ray is None else []),
        "HATCHERY_MODEL__THREADS": "1",
        "HATCHERY_DATA_DIR": str(tmp / "data"),
        "HATCHERY_EXECUTOR__HEARTBEAT_S": "1",
        "HATCHERY_EXECUTOR__CONCURRENCY": json.dumps({"generator": 2 if runs_jobs else 0}),
    }
    if ray is not None:
        env |= {"HATCHERY_EXECUTOR__KIND": "ray", "HATCHERY_EXECUTOR__RAY_ADDRESS": ray}
    return env


# Following runs ---------------------------------------------------------------------------


class Follower(threading.Thread):
    """Follows one run over a WebSocket, stamping each event's arrival (wall clock)."""

    def __init__(self, base_url: str, run_id: str) -> None:
        super().__init__(daemon=True)
        self.url = base_url.replace("http", "ws", 1) + f"/api/generator/ws/{run_id}"
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.changed = threading.Condition()
        self.error: BaseException | None = None
        self.connected_at = float("inf")

    def run(self) -> None:
        try:
            with connect(self.url, open_timeout=30, max_size=None) as socket:
                self.connected_at = time.time()
                while True:
                    event = json.loads(socket.recv(timeout=120))
                    arrived = time.time()
                    if "seq" not in event:
                        continue
                    with self.changed:
                        self.events.append((arrived, event))
                        self.changed.notify_all()
                    if event["type"] == "status" and event["data"]["status"] in TERMINAL:
                        return
        except BaseException as exc:  # reported by wait_for
            self.error = exc
            with self.changed:
                self.changed.notify_all()

    def wait_for(self, match: Any, timeout: float = 120) -> tuple[float, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for arrived, event in self.events:
                    if match(event):
                        return arrived, event
                if self.error is not None or not self.is_alive():
                    raise RuntimeError(f"follower ended without the event ({self.error!r})")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the event never came")
                self.changed.wait(left)

    def latencies(self) -> list[float]:
        """Arrival minus write time, for the events written after the follower connected
        (the earlier ones are a replay from the store, not a live delivery)."""
        stamped = [(arrived, _epoch(event["ts"])) for arrived, event in self.events]
        return [arrived - ts for arrived, ts in stamped if ts > self.connected_at]


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts).timestamp()


def start_run(client: httpx.Client, tokens: int) -> str:
    body = {"kind": "text", "prompts": ["ROMEO:"], "max_tokens": tokens, "temperature": 0.8}
    response = client.post("/api/generator/run", json=body)
    response.raise_for_status()
    run_id: str = response.json()["id"]
    return run_id


def followed(urls: list[str], run_id: str) -> list[Follower]:
    followers = [Follower(url, run_id) for url in urls]
    for follower in followers:
        follower.start()
    return followers


def _is_token(attempt: int) -> Any:
    return lambda e: e["type"] == "token" and e.get("attempt", 1) == attempt


def _is_terminal(event: dict[str, Any]) -> bool:
    return event["type"] == "status" and event["data"]["status"] in TERMINAL


# Measurements -------------------------------------------------------------------------------


def measure(a: str, b: str, figures: Figures, args: argparse.Namespace) -> None:
    with httpx.Client(base_url=a, timeout=30) as on_a, httpx.Client(base_url=b, timeout=30) as on_b:
        for _ in range(args.runs):
            run_id = start_run(on_a, args.tokens)
            follow_a, follow_b = followed([a, b], run_id)
            follow_b.wait_for(_is_terminal, timeout=300)
            follow_a.wait_for(_is_terminal, timeout=60)
            figures.latency_a += follow_a.latencies()
            figures.latency_b += follow_b.latencies()
        for _ in range(args.cancels):
            run_id = start_run(on_a, 4000)
            (follow_b,) = followed([b], run_id)
            follow_b.wait_for(_is_token(1), timeout=300)
            sent = time.time()
            on_b.post(f"/api/generator/cancel/{run_id}").raise_for_status()
            arrived, event = follow_b.wait_for(_is_terminal, timeout=60)
            if event["data"]["status"] == "cancelled":
                figures.cancels.append(arrived - sent)
        if figures.topology == "ray":
            for _ in range(args.kills):
                _kill_once(on_a, b, figures)


def _kill_once(on_a: httpx.Client, b: str, figures: Figures) -> None:
    run_id = start_run(on_a, 4000)
    (follow_b,) = followed([b], run_id)
    _, log = follow_b.wait_for(lambda e: e["type"] == "log" and "pid" in e["data"], timeout=300)
    follow_b.wait_for(_is_token(1), timeout=300)
    killed = time.time()
    os.kill(int(log["data"]["pid"]), signal.SIGKILL)
    marker, _ = follow_b.wait_for(lambda e: e["type"] == "attempt", timeout=120)
    resumed, _ = follow_b.wait_for(_is_token(2), timeout=300)
    figures.recovery_marker.append(marker - killed)
    figures.recovery_token.append(resumed - killed)
    on_a.post(f"/api/generator/cancel/{run_id}")
    follow_b.wait_for(_is_terminal, timeout=60)


def run_topology(topology: str, store_url: str, tmp: Path, args: argparse.Namespace) -> Figures:
    figures = Figures(topology)
    log = tmp / f"{topology}.log"
    with contextlib.ExitStack() as stack:
        ray = stack.enter_context(local_ray_head(2)) if topology == "ray" else None
        a = stack.enter_context(replica(replica_env(store_url, tmp, runs_jobs=True, ray=ray), log))
        b_env = replica_env(store_url, tmp, runs_jobs=ray is not None, ray=ray)
        b = stack.enter_context(replica(b_env, log))
        measure(a, b, figures, args)
    return figures


# Report ---------------------------------------------------------------------------------


def _ms(values: list[float], q: int | None) -> str:
    """The `q`-th percentile of `values` (s) in ms, or their maximum for None."""
    stats = latency_stats(values)
    value = stats.max if q is None else {50: stats.p50, 90: stats.p90, 99: stats.p99}[q]
    return "-" if value is None else f"{value:.0f}"


def report(results: list[Figures], store: str) -> None:
    table = Table(title=f"scale-out: two API replicas on {store} (ms)")
    for column in ("jobs", "follower", "events", "latency p50", "p99", "max"):
        table.add_column(column, justify="left" if column in ("jobs", "follower") else "right")
    for figures in results:
        for where, values in (("on A", figures.latency_a), ("on B", figures.latency_b)):
            row = [_ms(values, 50), _ms(values, 99), _ms(values, None)]
            table.add_row(figures.topology, where, str(len(values)), *row)
    console.print(table)
    actions = Table(title="cancel sent to B, and recovery after kill -9 of the Ray worker (ms)")
    for column in ("jobs", "measure", "n", "p50", "max"):
        actions.add_column(column, justify="left" if column in ("jobs", "measure") else "right")
    for figures in results:
        rows = [
            ("cancel -> cancelled event on B", figures.cancels),
            ("kill -> attempt event", figures.recovery_marker),
            ("kill -> first token of the retry", figures.recovery_token),
        ]
        for name, values in rows:
            if values:
                actions.add_row(
                    figures.topology, name, str(len(values)), _ms(values, 50), _ms(values, None)
                )
    console.print(actions)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="text runs followed per topology")
    parser.add_argument("--tokens", type=int, default=300, help="tokens per followed run")
    parser.add_argument("--cancels", type=int, default=5)
    parser.add_argument("--kills", type=int, default=2, help="worker kills (ray)")
    parser.add_argument("--topologies", default="local,ray")
    parser.add_argument("--quick", action="store_true", help="one of each, few tokens")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.tokens, args.cancels, args.kills = 1, 40, 1, 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    topologies = [name for name in args.topologies.split(",") if name]
    if "ray" in topologies:
        try:
            import ray  # noqa: F401
        except ImportError:
            console.print("[yellow]Ray is not installed: the ray topology is skipped")
            topologies.remove("ray")
    with tempfile.TemporaryDirectory(prefix="hatchery-scaleout-") as name:
        tmp = Path(name)
        with bench_store(tmp) as (store_url, store):
            results = [run_topology(topology, store_url, tmp, args) for topology in topologies]
    report(results, store)


if __name__ == "__main__":
    main()
