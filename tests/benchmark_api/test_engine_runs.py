"""Engine benchmark runs through a real server on bdh-nano: rows, views, compare, cancel."""

from __future__ import annotations

import csv
import io
import itertools
import math
import struct
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch

from benchmark_api.app import create_app
from benchmark_api.engine_bench import free_memory, memory_needed
from benchmark_api.roofline import ActivationProfile, decode_traffic
from benchmark_api.service import MEMORY_SHARE
from core.engine import ModelRegistry
from tests.benchmark_api.conftest import (
    TERMINAL,
    TINY_ENGINE,
    events,
    results,
    run_to_end,
    submit,
    wait_for,
)
from tests.conftest import NANO_MODEL, SHIPPED_MODEL, engine_settings

SWEEP: dict[str, Any] = {
    "kind": "engine",
    "model": "bdh-nano",
    "batch_sizes": [1, 2],
    "context_lengths": [16, 256],
    "new_tokens": 4,
    "modes": ["recurrent", "recompute"],
    "repeats": 2,
    "warmup": 1,
    "bandwidth_mb": 8,
}
SPREADS = ("prefill_tokens_per_s", "ttft_ms", "tpot_ms", "decode_tokens_per_s")


@pytest.fixture(scope="module")
def sweep(bench_server: Any) -> Iterator[dict[str, Any]]:
    """One engine sweep, shared by the tests that read its result."""
    with httpx.Client(base_url=bench_server.url, timeout=30) as client:
        yield run_to_end(client, SWEEP)


def test_sweep_returns_every_row_with_plausible_figures(sweep: dict[str, Any]) -> None:
    result = sweep["result"]
    rows = result["rows"]
    combos = set(itertools.product(SWEEP["modes"], SWEEP["batch_sizes"], SWEEP["context_lengths"]))
    assert {(r["mode"], r["batch_size"], r["context"]) for r in rows} == combos
    assert len(rows) == len(combos)
    for row in rows:
        assert row["status"] == "measured"
        assert row["repeats"] == SWEEP["repeats"]
        for name in SPREADS:
            spread = row[name]
            assert 0 < spread["min"] <= spread["median"] <= spread["max"], (name, row)
        assert row["peak_memory_mb"] > 0
        assert row["prefill_fraction"] > 0
        if row["mode"] == "recurrent":
            assert row["bytes_per_token"] > 0 and row["residency"] in ("cache", "dram")
            assert 0 < row["roofline_fraction"] <= 1
        else:  # compute-bound: held against the matmul peak only
            assert row["roofline_fraction"] is None and row["residency"] is None
    summary = result["summary"]
    assert summary["complete"] and summary["measured"] == len(rows) == summary["planned_rows"]
    env = result["environment"]
    assert env["bandwidth_gb_s"] > 0 and env["read_bandwidth_gb_s"] > 0
    assert env["update_bandwidth_gb_s"] > 0
    assert env["matmul_peak_gflop_s"] > 0 and env["cache_mb"] > 0
    assert 0 < env["product_density"] <= env["neuron_density"] <= env["pair_density"] <= 1
    assert env["untrained"] is False
    assert env["torch_version"] == torch.__version__
    assert env["cores"] >= 1 and env["device"] == "cpu" and env["model"] == NANO_MODEL


def test_recompute_is_slower_than_recurrent_at_the_longest_context(
    sweep: dict[str, Any],
) -> None:
    rows = sweep["result"]["rows"]
    longest = max(SWEEP["context_lengths"])
    for batch in SWEEP["batch_sizes"]:
        tpot = {
            r["mode"]: r["tpot_ms"]["median"]
            for r in rows
            if r["context"] == longest and r["batch_size"] == batch
        }
        assert tpot["recompute"] > tpot["recurrent"], (batch, tpot)
    ratio = sweep["result"]["summary"]["recompute_vs_recurrent"]
    assert ratio["context"] == longest and ratio["tpot_ratio"] > 1


def test_traffic_and_roofline_follow_their_definitions(
    sweep: dict[str, Any], models_dir: Any
) -> None:
    config = ModelRegistry(models_dir).info(NANO_MODEL).config
    env = sweep["result"]["environment"]
    profile = ActivationProfile(
        env["neuron_density"], env["pair_density"], env["product_density"], tokens=256
    )
    cache = int(env["cache_mb"] * 2**20)
    for row in sweep["result"]["rows"]:
        if row["mode"] != "recurrent":
            continue
        traffic = decode_traffic(
            config, profile, batch=row["batch_size"], weight_element_bytes=4, cache_bytes=cache
        )
        assert row["bytes_per_token"] == pytest.approx(traffic.bytes_per_token)
        assert row["residency"] == traffic.residency == "cache"  # bdh-nano: 0.2 MB a sequence
        achieved = row["bytes_per_token"] * row["decode_tokens_per_s"]["median"]
        assert row["achieved_gb_s"] == pytest.approx(achieved / 1e9, rel=1e-6)
        assert row["roofline_fraction"] == pytest.approx(
            achieved / (row["bandwidth_gb_s"] * 1e9), rel=1e-6
        )


def test_metric_events_for_every_row(client: httpx.Client, sweep: dict[str, Any]) -> None:
    found = events(client, sweep["run"]["id"])
    metrics = [e["data"] for e in found if e["type"] == "metric"]
    decode = [m for m in metrics if m["name"] == "decode_tokens_per_s"]
    assert sorted(m["step"] for m in decode) == list(range(len(sweep["result"]["rows"])))
    for metric in decode:
        row = sweep["result"]["rows"][metric["step"]]
        assert metric["value"] == pytest.approx(row["decode_tokens_per_s"]["median"])
        assert metric["unit"] == "tokens/s" and metric["labels"]["mode"] == row["mode"]
    assert found[-1]["type"] == "status" and found[-1]["data"]["status"] == "succeeded"
    assert any(e["type"] == "progress" for e in found)


def test_png_and_svg_plots_are_valid_images(client: httpx.Client, sweep: dict[str, Any]) -> None:
    run_id = sweep["run"]["id"]
    png = client.get(f"/api/benchmark/results/{run_id}/plot.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert_png(png.content)
    svg = client.get(f"/api/benchmark/results/{run_id}/plot.svg")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert_svg(svg.content, expect_text="decode throughput")


def assert_png(data: bytes) -> None:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, chunk = struct.unpack(">I4s", data[8:16])
    width, height = struct.unpack(">II", data[16:24])
    assert chunk == b"IHDR" and length == 13 and width > 100 and height > 100
    assert data[-8:-4] == b"IEND"


def assert_svg(data: bytes, expect_text: str) -> None:
    root = ET.fromstring(data)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert float(root.attrib["width"].removesuffix("pt")) > 0
    assert expect_text in data.decode()


def test_csv_export_parses_and_matches_the_json(
    client: httpx.Client, sweep: dict[str, Any]
) -> None:
    run_id = sweep["run"]["id"]
    response = client.get(f"/api/benchmark/results/{run_id}.csv")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert f"benchmark-{run_id}.csv" in response.headers["content-disposition"]
    records = list(csv.DictReader(io.StringIO(response.text)))
    rows = sweep["result"]["rows"]
    assert len(records) == len(rows)
    for record, row in zip(records, rows, strict=True):
        assert record["mode"] == row["mode"] and int(record["context"]) == row["context"]
        for name in SPREADS:
            assert float(record[name]) == pytest.approx(row[name]["median"], rel=1e-5)
            assert float(record[f"{name}_max"]) == pytest.approx(row[name]["max"], rel=1e-5)
        if row["roofline_fraction"] is None:  # recompute rows are compute-bound
            assert record["roofline_fraction"] == "" and record["residency"] == ""
        else:
            assert float(record["roofline_fraction"]) == pytest.approx(
                row["roofline_fraction"], rel=1e-5
            )
            assert record["residency"] == row["residency"]
        assert float(record["prefill_fraction"]) == pytest.approx(row["prefill_fraction"], rel=1e-5)


def test_view_routes_refuse_unknown_and_unfinished_runs(client: httpx.Client) -> None:
    for path in ("/plot.png", "/plot.svg", ".csv"):
        response = client.get(f"/api/benchmark/results/{'0' * 32}{path}")
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"]["code"] == "run_not_found"
    # The convention's own results route still answers beside the .csv route.
    response = client.get(f"/api/benchmark/results/{'0' * 32}")
    assert response.status_code == 404 and response.json()["error"]["code"] == "run_not_found"


def test_compare_matches_rows_and_gives_ratios(client: httpx.Client, sweep: dict[str, Any]) -> None:
    other = run_to_end(client, TINY_ENGINE | {"context_lengths": [16, 256], "batch_sizes": [1, 4]})
    a, b = sweep["run"]["id"], other["run"]["id"]
    response = client.get("/api/benchmark/compare", params={"ids": f"{a},{b}"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["kind"] == "engine" and body["baseline"] == a
    assert [run["id"] for run in body["runs"]] == [a, b]
    shared = [row for row in body["rows"] if set(row["values"]) == {a, b}]
    # Matched on (mode, batch, context, new tokens, dtype): recurrent b=1 at 16 and 256.
    assert {(r["params"]["batch_size"], r["params"]["context"]) for r in shared} == {
        (1, 16),
        (1, 256),
    }
    for row in shared:
        assert row["params"]["mode"] == "recurrent"
        for metric in body["metrics"]:
            value, base = row["values"][b][metric], row["values"][a][metric]
            assert row["ratios"][b][metric] == pytest.approx(value / base)
    only_one = [row for row in body["rows"] if len(row["values"]) == 1]
    assert only_one and all(row["ratios"] == {} for row in only_one)


def test_compare_refuses_bad_id_lists(client: httpx.Client, sweep: dict[str, Any]) -> None:
    a = sweep["run"]["id"]
    single = client.get("/api/benchmark/compare", params={"ids": a})
    assert single.status_code == 400 and single.json()["error"]["param"] == "ids"
    unknown = client.get("/api/benchmark/compare", params={"ids": f"{a},{'f' * 32}"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "run_not_found"
    many = ",".join(f"{i:032x}" for i in range(11))
    too_many = client.get("/api/benchmark/compare", params={"ids": many})
    assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "limit_exceeded"


def test_cancel_mid_sweep_keeps_the_rows_measured_so_far(client: httpx.Client) -> None:
    long_sweep = TINY_ENGINE | {
        "context_lengths": [16, 32, 64, 128],
        "batch_sizes": [1, 2, 3, 4, 5],
        "new_tokens": 256,
        "repeats": 5,
    }
    planned = 20
    run_id = submit(client, long_sweep)
    wait_for(client, run_id, lambda run: run["progress"] > 0 or run["status"] in TERMINAL)
    cancelled = client.post(f"/api/benchmark/cancel/{run_id}")
    assert cancelled.status_code == 200
    body = results(client, run_id)
    assert body["run"]["status"] == "cancelled", body["run"]
    assert body["run"]["error"]["code"] == "cancelled"
    partial = body["result"]
    assert partial is not None and partial["summary"]["complete"] is False
    assert 1 <= len(partial["rows"]) < planned == partial["summary"]["planned_rows"]
    for row in partial["rows"]:
        assert row["decode_tokens_per_s"]["median"] > 0
    # Views work on the partial result too.
    assert client.get(f"/api/benchmark/results/{run_id}.csv").status_code == 200


def test_runs_list_filters_by_kind(client: httpx.Client, sweep: dict[str, Any]) -> None:
    listed = client.get("/api/benchmark/runs", params={"kind": "engine"}).json()
    assert sweep["run"]["id"] in {run["id"] for run in listed["data"]}
    assert all(run["kind"] == "engine" for run in listed["data"])


def test_engine_run_on_each_store(store_url: str, models_dir: Any, live_server: Any) -> None:
    server = live_server(create_app(engine_settings(store_url, models_dir)))
    with httpx.Client(base_url=server.url, timeout=30) as client:
        body = run_to_end(client, TINY_ENGINE | {"modes": ["recurrent", "recompute"]})
    assert [row["mode"] for row in body["result"]["rows"]] == ["recurrent", "recompute"]
    assert all(math.isfinite(r["tpot_ms"]["median"]) for r in body["result"]["rows"])


def test_missing_model_fails_the_run_with_model_not_found(client: httpx.Client) -> None:
    body = results(client, submit(client, TINY_ENGINE | {"model": "no-such-model"}))
    assert body["run"]["status"] == "failed"
    assert body["run"]["error"]["code"] == "model_not_found"


def test_shipped_model_sweep(client: httpx.Client, models_dir: Any) -> None:
    body = run_to_end(
        client,
        TINY_ENGINE
        | {"model": SHIPPED_MODEL, "context_lengths": [64], "modes": ["recurrent", "recompute"]},
    )
    rows = body["result"]["rows"]
    assert body["result"]["environment"]["parameters"] > 500_000
    assert all(r["status"] == "measured" and r["decode_tokens_per_s"]["median"] > 0 for r in rows)


def test_dtype_sweep_models_each_dtypes_traffic(client: httpx.Client, models_dir: Any) -> None:
    body = run_to_end(client, TINY_ENGINE | {"dtypes": ["float32", "bfloat16"]})
    rows = {row["dtype"]: row for row in body["result"]["rows"]}
    assert set(rows) == {"float32", "bfloat16"}
    assert all(row["decode_tokens_per_s"]["median"] > 0 for row in rows.values())
    # The same float32 state either way; bfloat16 takes the PyTorch path, which moves the
    # whole state and decoder (no zero skipping), in half-size weights.
    assert rows["bfloat16"]["state_memory_mb"] == rows["float32"]["state_memory_mb"]
    config = ModelRegistry(models_dir).info(NANO_MODEL).config
    cache = int(body["result"]["environment"]["cache_mb"] * 2**20)
    for dtype, element, skips in (("float32", 4, True), ("bfloat16", 2, False)):
        row = rows[dtype]
        profile = ActivationProfile(
            row["neuron_density"], row["pair_density"], row["product_density"], tokens=256
        )
        traffic = decode_traffic(
            config, profile, batch=1, weight_element_bytes=element, cache_bytes=cache,
            skips_zeros=skips,
        )  # fmt: skip
        assert row["bytes_per_token"] == pytest.approx(traffic.bytes_per_token)
    assert body["result"]["environment"]["dtypes"] == ["float32", "bfloat16"]


def test_rows_too_big_for_the_memory_are_skipped(client: httpx.Client, models_dir: Any) -> None:
    config = ModelRegistry(models_dir).info(NANO_MODEL).config
    big = {
        "modes": ["recompute"],
        "batch_sizes": [32],
        "context_lengths": [8000],
        "recompute_max_context": 8192,
    }
    need = memory_needed(config, batch_size=32, context=8000, new_tokens=4, mode="recompute")
    if need <= MEMORY_SHARE * free_memory(torch.device("cpu")):
        pytest.skip("this machine has the memory for the row: it would run for a long time")
    body = run_to_end(client, TINY_ENGINE | big)
    (row,) = body["result"]["rows"]
    assert row["status"] == "skipped" and "GB" in row["note"]
    assert row["decode_tokens_per_s"] is None
    assert body["result"]["summary"]["skipped"] == 1


def test_memory_estimate_grows_as_each_mode_does(models_dir: Any) -> None:
    config = ModelRegistry(models_dir).info(NANO_MODEL).config

    def need(mode: str, context: int, batch: int = 1) -> int:
        return memory_needed(config, batch_size=batch, context=context, new_tokens=0, mode=mode)  # type: ignore[arg-type]

    # Recompute: quadratic in the sequence; recurrent: flat beyond one prefill chunk.
    assert need("recompute", 4096) > 3.5 * need("recompute", 2048)
    assert need("recurrent", 4096) == need("recurrent", 2048)
    assert need("recurrent", 256, batch=4) == 4 * need("recurrent", 256)
