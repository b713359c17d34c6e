"""The serving benchmark's client side, against the real test server (tiny sizes)."""

from __future__ import annotations

import argparse

from generator_api.serving_bench import _run_level, idle_health, parse_args, percentile
from tests.support.server import LiveServer

from .conftest import MODEL


def test_percentiles() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.5  # linear interpolation between 50 and 51
    assert percentile(values, 99) == 99.01


def test_options() -> None:
    args = parse_args(["--quick", "--levels", "1,2"])
    assert args.requests == 1 and args.max_tokens == 64 and args.levels == "1,2"


async def test_clients_count_tokens_and_latencies(server: LiveServer) -> None:
    args = argparse.Namespace(model=MODEL, requests=2, max_tokens=8)
    result = await _run_level(server.url, 3, args)
    assert result.errors == 0 and result.requests == 6
    assert result.completion_tokens == 6 * 8  # from the usage chunks
    assert len(result.ttft_s) == 6 and all(t > 0 for t in result.ttft_s)
    assert result.itl_s and result.tokens_per_s > 0
    assert len(idle_health(server.url, samples=3)) == 3
