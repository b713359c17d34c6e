"""Pure logic of the Benchmark component: metric definitions, tables, comparison, URLs."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import numpy as np
import pytest
import torch

from benchmark_api import plots
from benchmark_api.compare import RunResult, compare
from benchmark_api.engine_bench import measure_repeats
from benchmark_api.environment import describe
from benchmark_api.reports import engine_summary, serving_summary
from benchmark_api.results import EngineResult, EngineRow, ServingResult, Spread
from benchmark_api.roofline import MachineLimits, copy_bandwidth, update_bandwidth
from benchmark_api.schemas import EngineBenchRequest, ServingBenchRequest
from benchmark_api.serving_bench import (
    RequestOutcome,
    latency_stats,
    make_prompts,
    summarize_level,
)
from benchmark_api.tables import columns, to_csv
from core.api.outbound import check_url, default_base_url
from core.api.submission import Submission, current_submission, submitting
from core.config import load_settings
from core.engine import kernels
from core.errors import InvalidRequest
from tests.conftest import build_nano_model


def outcome(ttft: float, e2e: float, tokens: int, gaps: list[float]) -> RequestOutcome:
    return RequestOutcome(
        prompt_tokens=10, ok=True, output_tokens=tokens, ttft_s=ttft, e2e_s=e2e, itl_s=gaps
    )


def test_level_metrics_follow_the_vllm_definitions() -> None:
    done = [outcome(0.1, 0.5, 5, [0.1] * 4), outcome(0.2, 0.3, 2, [0.1]), outcome(0.3, 0.3, 1, [])]
    failed = RequestOutcome(prompt_tokens=10, error="HTTP 500: boom")
    level = summarize_level([*done, failed], 2.0, concurrency=4, request_rate=None)
    assert (level.completed, level.errors, level.num_requests) == (3, 1, 4)
    assert level.output_tokens == 8 and level.input_tokens == 30
    assert level.request_throughput == pytest.approx(3 / 2.0)
    assert level.output_tokens_per_s == pytest.approx(8 / 2.0)
    assert level.total_tokens_per_s == pytest.approx(38 / 2.0)
    # TPOT = (e2e - ttft) / (tokens - 1), only for requests with more than one token.
    tpots = [(0.5 - 0.1) / 4 * 1000, (0.3 - 0.2) / 1 * 1000]
    assert level.tpot_ms.count == 2
    assert level.tpot_ms.mean == pytest.approx(np.mean(tpots))
    # ITL pools every chunk gap of every request.
    assert level.itl_ms.count == 5
    assert level.ttft_ms.p50 == pytest.approx(200.0)
    assert level.error_samples == ["HTTP 500: boom"]


def test_latency_percentiles_interpolate_linearly() -> None:
    samples = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    stats = latency_stats(samples)
    assert stats.count == 100
    assert (stats.min, stats.max) == pytest.approx((1.0, 100.0))
    assert stats.mean == pytest.approx(50.5)
    assert (stats.p50, stats.p90, stats.p99) == pytest.approx((50.5, 90.1, 99.01))
    assert latency_stats([]).p99 is None


def test_prompts_have_the_exact_size_and_differ() -> None:
    prompts = make_prompts(50, 37, seed=3)
    assert all(len(p.encode()) == 37 for p in prompts)
    assert all(len(p) == size for size in (1, 2, 3, 8) for p in make_prompts(20, size, seed=1))
    assert len(set(prompts)) == 50
    assert make_prompts(50, 37, seed=3) == prompts


def test_serving_levels_are_every_concurrency_rate_pair() -> None:
    request = ServingBenchRequest(concurrency=[1, 2], request_rate=5)
    assert request.request_rate == [5.0]
    assert request.levels() == [(1, 5.0), (2, 5.0)]
    assert ServingBenchRequest(concurrency=None, request_rate=[1, 2]).levels() == [
        (None, 1.0),
        (None, 2.0),
    ]
    assert ServingBenchRequest(base_url="http://h:1/v1/").base_url == "http://h:1/v1"


def test_default_base_url_and_allow_list() -> None:
    settings = load_settings(server={"host": "0.0.0.0", "port": 8123})
    assert default_base_url(settings) == "http://127.0.0.1:8123/v1"
    ipv6 = load_settings(server={"host": "::1", "port": 9})
    assert default_base_url(ipv6) == "http://[::1]:9/v1"
    check_url("http://[::1]:9/v1", ipv6.outbound.allow_hosts)
    check_url("http://LOCALHOST:9/v1", settings.outbound.allow_hosts)
    with pytest.raises(InvalidRequest) as refused:
        check_url("http://example.com/v1", settings.outbound.allow_hosts)
    assert refused.value.code == "url_not_allowed" and refused.value.status_code == 400
    anywhere = load_settings(outbound={"allow_hosts": ["*"]})
    check_url("https://example.com/v1", anywhere.outbound.allow_hosts)


def _row(mode: str, batch: int, context: int, tpot: float) -> EngineRow:
    spread = Spread.of([tpot, tpot * 1.1])
    decode = Spread.of([batch * 1000 / tpot])
    return EngineRow(
        mode=mode,  # type: ignore[arg-type]
        batch_size=batch,
        context=context,
        new_tokens=4,
        dtype="float32",
        device="cpu",
        repeats=2,
        prefill_tokens_per_s=decode,
        ttft_ms=spread,
        tpot_ms=spread,
        decode_tokens_per_s=decode,
        peak_memory_mb=10.0,
        roofline_fraction=0.0,
    )


def _engine_result(rows: list[EngineRow]) -> EngineResult:
    env = describe(device=torch.device("cpu"), dtypes=["float32"], model="m")
    return EngineResult(
        model="m",
        rows=rows,
        summary=engine_summary(rows, planned=len(rows), complete=True),
        environment=env,
    )


def test_engine_summary_finds_the_recompute_ratio_at_the_longest_context() -> None:
    rows = [
        _row("recurrent", 1, 64, 1.0),
        _row("recompute", 1, 64, 3.0),
        _row("recurrent", 1, 512, 1.0),
        _row("recompute", 1, 512, 9.0),
        _row("recurrent", 2, 1024, 1.0),  # no recompute partner
    ]
    ratio = engine_summary(rows, planned=6, complete=False).recompute_vs_recurrent
    assert ratio is not None
    assert (ratio.context, ratio.batch_size) == (512, 1)
    assert ratio.tpot_ratio == pytest.approx(9.0 * 1.05 / (1.0 * 1.05))


def test_compare_ratios_and_missing_baselines() -> None:
    base = _engine_result([_row("recurrent", 1, 64, 2.0), _row("recurrent", 1, 128, 2.0)])
    other = _engine_result([_row("recurrent", 1, 64, 1.0), _row("recurrent", 4, 64, 1.0)])
    other.rows[0].roofline_fraction = 0.5
    now = datetime.now(UTC)
    runs = [
        RunResult(
            id="a", kind="engine", model="m", status="succeeded", created_at=now, result=base
        ),
        RunResult(
            id="b", kind="engine", model="m", status="succeeded", created_at=now, result=other
        ),
    ]
    response = compare(runs)
    by_key = {(r.params["batch_size"], r.params["context"]): r for r in response.rows}
    assert set(by_key) == {(1, 64), (1, 128), (4, 64)}
    matched = by_key[(1, 64)]
    assert matched.ratios["b"]["tpot_ms"] == pytest.approx(0.5)
    assert matched.ratios["b"]["decode_tokens_per_s"] == pytest.approx(2.0)
    assert matched.ratios["b"]["roofline_fraction"] is None  # the baseline's is 0
    assert by_key[(4, 64)].ratios == {} and by_key[(1, 128)].ratios == {}
    with pytest.raises(InvalidRequest):
        compare(runs[:1])


def test_empty_results_still_export_and_draw() -> None:
    empty_engine = _engine_result([])
    text = to_csv(empty_engine)
    assert next(csv.reader(io.StringIO(text))) == columns(empty_engine)
    serving = ServingResult(
        model="m",
        base_url="http://h/v1",
        stream=True,
        levels=[],
        summary=serving_summary([], planned=2, complete=False),
        environment=empty_engine.environment,
    )
    assert to_csv(serving).count("\n") == 1
    for result in (empty_engine, serving):
        assert plots.render(result, "png")[:4] == b"\x89PNG"
        assert b"<svg" in plots.render(result, "svg")


def test_measurements_stop_when_cancelled_between_steps() -> None:
    model = build_nano_model()
    calls = []

    def check() -> None:
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        measure_repeats(
            model,
            batch_size=1,
            context=8,
            new_tokens=50,
            mode="recurrent",
            repeats=1,
            check_cancelled=check,
        )
    assert len(calls) == 4


def test_copy_bandwidth_is_positive() -> None:
    assert copy_bandwidth(torch.device("cpu"), footprint_bytes=2**20, repeats=2) > 0
    assert copy_bandwidth(torch.device("cpu"), footprint_bytes=2**20, repeats=2, threads=2) > 0
    assert update_bandwidth(torch.device("cpu"), footprint_bytes=2**20, repeats=2, threads=2) > 0


def test_limits_are_measured_on_the_decode_threads() -> None:
    limits = MachineLimits.measure(torch.device("cpu"), dram_footprint_bytes=2**22, threads=2)
    assert limits.threads == 2
    figures = (limits.dram_copy_bytes_s, limits.dram_read_bytes_s, limits.dram_update_bytes_s)
    assert min(figures) > 0 and limits.dram_bytes_s == max(figures)
    assert MachineLimits.measure(torch.device("cpu"), dram_footprint_bytes=2**22).threads == (
        kernels.threads()
    )


def test_submission_context_fills_defaults_and_applies_the_settings() -> None:
    settings = load_settings(
        generation={"max_batch": 4, "max_prompt_bytes": 200}, model={"default": "m1"}
    )
    with submitting(Submission(settings, "http://127.0.0.1:8123")):
        serving = ServingBenchRequest()
        engine = EngineBenchRequest(batch_sizes=[4])
        with pytest.raises(InvalidRequest) as refused:
            EngineBenchRequest(batch_sizes=[5])
        with pytest.raises(InvalidRequest) as too_long:
            ServingBenchRequest(prompt_bytes=201)
    assert serving.base_url == "http://127.0.0.1:8123/v1" and serving.model == "m1"
    assert engine.model == "m1"
    assert (refused.value.param, refused.value.code) == ("batch_sizes", "limit_exceeded")
    assert (too_long.value.param, too_long.value.code) == ("prompt_bytes", "limit_exceeded")
    # Outside a request nothing is filled in: the job decides with its own settings.
    assert ServingBenchRequest().base_url is None and EngineBenchRequest().model is None
    assert current_submission() is None


def test_a_ray_heads_ports_are_distinct_and_outside_its_worker_range() -> None:
    from benchmark_api.ray_head import WORKER_PORTS, _ports

    for _ in range(20):
        ports, workers = _ports(7)
        assert len(set(ports)) == 7
        assert not any(workers <= port < workers + WORKER_PORTS for port in ports)
