"""`make bench`'s engine tables, on bdh-nano with tiny sizes."""

from __future__ import annotations

import pytest
from rich.console import Console

from benchmark_api import make_bench
from core.engine import LanguageModel, kernels
from tests.engine.conftest import nano_model


def test_decode_vs_batch_compares_both_kernels_and_restores_the_choice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("numba", reason="the fused kernel needs numba (a project dependency)")
    console = Console(record=True, width=200)
    monkeypatch.setattr(make_bench, "console", console)
    monkeypatch.setenv(kernels.KERNEL_ENV, "auto")
    lm = LanguageModel("nano", nano_model(scale=5.0), {})
    make_bench.decode_vs_batch(lm, [1, 2], context=8, new_tokens=2, rounds=2)
    rows = [line for line in console.export_text().splitlines() if "│" in line]
    kernels_seen = {line.split("│")[1].strip() for line in rows}
    assert kernels_seen == {"torch", "fused"}
    assert len(rows) == 4  # two kernels x two batch sizes
    assert all(float(line.split("│")[6].strip().rstrip("x")) > 0 for line in rows)
    assert kernels.selected_kernel() == "auto"
