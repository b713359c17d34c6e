"""`make bench`'s serving script, client side, against a real Generator server (tiny sizes)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from benchmark_api.make_serving_bench import (
    LevelRounds,
    health_latencies,
    measure_level,
    parse_args,
    report,
    run_clients,
    untrained_model,
    warm_up,
)
from benchmark_api.serving_bench import latency_stats
from benchmark_api.serving_cpu import CpuClock, EngineReference
from core.engine import load_model
from generator_api.app import create_app as create_generator
from tests.conftest import NANO_MODEL, engine_settings
from tests.support.poll import poll_until
from tests.support.server import LiveServer


@pytest.fixture
def generator(
    live_server: Callable[[FastAPI], LiveServer], sqlite_url: str, models_dir: Path
) -> LiveServer:
    server = live_server(create_generator(engine_settings(sqlite_url, models_dir)))
    poll_until(
        lambda: httpx.get(f"{server.url}/ready").status_code,
        lambda status: status == 200,
        timeout=60,
        what="the Generator's /ready",
    )
    return server


def test_options() -> None:
    args = parse_args(["--quick", "--levels", "1,2"])
    assert args.requests == 1 and args.max_tokens == 64 and args.levels == "1,2"
    assert args.rounds == 1 and args.template_rounds == 1
    assert parse_args([]).templates == "bdh-official"
    assert parse_args([]).levels == "1,4,8,16" and parse_args([]).template_levels == "1,4,8"


async def test_clients_count_tokens_and_latencies(generator: LiveServer) -> None:
    args = argparse.Namespace(model=NANO_MODEL, requests=2, max_tokens=8)
    await warm_up(generator.url, args)
    level = LevelRounds(clients=3)
    level.add_round(*await run_clients(generator.url, 3, args))
    level.add_round(*await run_clients(generator.url, 3, args))
    pooled = level.pooled()
    assert pooled.errors == 0 and pooled.completed == 12
    assert pooled.output_tokens == 12 * 8  # from the usage chunks
    assert pooled.ttft_ms.count == 12
    assert pooled.ttft_ms.min is not None and pooled.ttft_ms.min > 0
    # A gap between chunks; a chunk may carry several tokens when the server is busy.
    assert 0 < pooled.itl_ms.count <= 12 * 7
    assert len(level.rounds) == 2 and level.tokens_per_s > 0
    rates = [r.output_tokens_per_s for r in level.rounds]
    assert level.tokens_per_s == pytest.approx(sum(rates) / 2)  # the median of two rounds


def test_health_probe_under_load_and_the_report(
    generator: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    args = argparse.Namespace(model=NANO_MODEL, requests=1, max_tokens=8, rounds=1)
    idle = latency_stats(health_latencies(generator.url, lambda samples: samples < 3))
    assert idle.count == 3
    level = LevelRounds(clients=2)
    measure_level(generator.url, level, args, probe=True)
    assert level.health_s and all(latency > 0 for latency in level.health_s)
    assert level.pooled().completed == 2
    report([level], idle, args)
    printed = capsys.readouterr().out
    assert "2 streams: 1.00x" in printed and f"({len(level.health_s)} probes)" in printed


def test_the_report_holds_levels_against_the_engine_and_shows_the_cpu(
    generator: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """In-process server: its CPU is this process's, so every share is counted somewhere."""
    args = argparse.Namespace(model=NANO_MODEL, requests=1, max_tokens=8, rounds=1)
    level = LevelRounds(clients=2)
    measure_level(generator.url, level, args, probe=True, clock=CpuClock(os.getpid()))
    cpu = level.cpu
    assert cpu.wall_s > 0 and cpu.client_s > 0 and cpu.server_s > 0 and cpu.prober_s > 0
    assert level.output_tokens == 2 * 8
    engine = EngineReference(batch=2, tokens_per_s=[100.0, 300.0], cpu_s_per_token=[0.001])
    idle = latency_stats([0.001])
    report([level], idle, args, engine)
    printed = capsys.readouterr().out
    assert "vs engine" in printed and "engine alone, batch 2 (median of 2" in printed
    assert "200 tok/s" in printed
    assert "Where the" in printed and "load generator" in printed and "others" in printed


def test_an_untrained_template_model_is_made_to_serve(tmp_path: Path) -> None:
    untrained_model(NANO_MODEL, tmp_path)
    lm = load_model(NANO_MODEL, models_dir=tmp_path, device="cpu")
    assert lm.config.n_layer > 0 and not lm.model.training
