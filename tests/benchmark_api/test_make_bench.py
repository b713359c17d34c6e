"""`make bench`'s engine tables, on bdh-nano with tiny sizes."""

from __future__ import annotations

import pytest
import torch
from rich.console import Console

from benchmark_api import make_bench
from benchmark_api.roofline import MachineLimits
from core.engine import LanguageModel, kernels
from tests.core.engine.conftest import nano_model


def test_decode_vs_batch_compares_both_kernels_and_restores_the_choice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    console = Console(record=True, width=200)
    monkeypatch.setattr(make_bench, "console", console)
    monkeypatch.setenv(kernels.KERNEL_ENV, "auto")
    lm = LanguageModel("nano", nano_model(scale=5.0), {})
    limits = MachineLimits.measure(torch.device("cpu"), dram_footprint_bytes=2**26)
    make_bench.decode_vs_batch(lm, [1, 2], context=8, new_tokens=2, limits=limits, rounds=2)
    rows = [line for line in console.export_text().splitlines() if "│" in line]
    cells = [[cell.strip() for cell in line.split("│")[1:-1]] for line in rows]
    assert {row[0] for row in cells} == {"torch", "fused"}
    assert len(rows) == 4  # two kernels x two batch sizes
    assert all(float(row[4].rstrip("x")) > 0 for row in cells)  # vs torch
    assert all(row[5] == "cache" for row in cells)  # bdh-nano's states fit any cache
    assert all(float(row[7]) > 0 for row in cells)  # the limit each row is held against
    assert all(0 <= float(row[8].rstrip("%")) <= 100 for row in cells)  # the roofline, rounded
    assert kernels.selected_kernel() == "auto"


def test_a_dram_row_is_held_against_each_round_s_own_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the cache taken as tiny every row is DRAM-resident; the limit is measured again
    before and after each measurement (one measure serves as the after of a measurement and
    the before of the next), the better of the two counts, and the column shows the median
    of a row's own limits."""
    console = Console(record=True, width=200)
    monkeypatch.setattr(make_bench, "console", console)
    lm = LanguageModel("nano", nano_model(scale=5.0), {})
    limits = MachineLimits.measure(torch.device("cpu"), dram_footprint_bytes=2**22)
    limits.cache_bytes = 1
    # before the first measure, then after each: torch, fused, torch, fused
    measured = iter([10e9, 5e9, 40e9, 35e9, 30e9])
    monkeypatch.setattr(limits, "dram_now", lambda: next(measured))
    make_bench.decode_vs_batch(lm, [1], context=8, new_tokens=2, limits=limits, rounds=2)
    rows = [line for line in console.export_text().splitlines() if "│" in line]
    cells = {
        cell[0]: cell for cell in ([c.strip() for c in line.split("│")[1:-1]] for line in rows)
    }
    assert {row[5] for row in cells.values()} == {"dram"}
    assert (
        cells["torch"][7] == "25.0" and cells["fused"][7] == "37.5"
    )  # torch: max(10, 5), max(40, 35); fused: max(5, 40), max(35, 30)


def test_prefill_vs_parallel_reports_both_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    console = Console(record=True, width=200)
    monkeypatch.setattr(make_bench, "console", console)
    lm = LanguageModel("nano", nano_model(scale=5.0), {})
    limits = MachineLimits.measure(torch.device("cpu"), dram_footprint_bytes=2**26)
    make_bench.prefill_vs_parallel(lm, [16, 64], limits, rounds=1)
    rows = [line for line in console.export_text().splitlines() if "│" in line]
    cells = [[cell.strip() for cell in line.split("│")[1:-1]] for line in rows]
    assert [row[0] for row in cells] == ["16", "64"]
    for row in cells:
        prefill, parallel, ratio = float(row[1]), float(row[2]), float(row[3].rstrip("x"))
        # both times are shown rounded to 0.1 ms, the ratio to 0.01
        low, high = (
            (prefill - 0.06) / (parallel + 0.06),
            (prefill + 0.06) / max(parallel - 0.06, 1e-3),
        )
        assert low - 0.006 <= ratio <= high + 0.006
        write, second = float(row[4]), float(row[5])
        assert 0 <= write <= second  # the second token carries the deferred state write
        tokens_per_s, length = float(row[6].replace(",", "")), int(row[0])
        # prefill ms is shown rounded to 0.1 ms
        assert (
            length * 1000 / (prefill + 0.06)
            <= tokens_per_s
            <= length * 1000 / max(prefill - 0.06, 1e-3)
        )
