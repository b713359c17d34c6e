"""The roofline holds: measured traffic against limits measured in the same run, never above 1.

Engine runs through a real server on the shipped model and on untrained models of the
templates (a `template` instead of a `model`), small contexts and few steps.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx
import pytest
import torch

from benchmark_api.roofline import (
    ActivationProfile,
    activation_profile,
    decode_traffic,
    parallel_flops,
    prefill_flops,
    state_write_flops,
)
from core.engine import BDH
from core.engine.training import TEMPLATES
from tests.benchmark_api.conftest import run_to_end
from tests.conftest import SHIPPED_MODEL

ROWS: dict[str, Any] = {
    "kind": "engine",
    "context_lengths": [64],
    "new_tokens": 3,
    "modes": ["recurrent"],
    "repeats": 1,
    "warmup": 1,
    "bandwidth_mb": 256,
}


@pytest.mark.parametrize(
    ("source", "batches"),
    [
        ({"model": SHIPPED_MODEL}, [1, 16]),
        ({"template": "bdh-tiny"}, [1, 16]),
        ({"template": "bdh-small"}, [1, 4]),
        ({"template": "bdh-official"}, [1]),
    ],
    ids=["shipped", "bdh-tiny", "bdh-small", "bdh-official"],
)
def test_roofline_fractions_are_labelled_and_at_most_one(
    client: httpx.Client, models_dir: Any, source: dict[str, str], batches: list[int]
) -> None:
    if "model" in source and not (models_dir / SHIPPED_MODEL).is_dir():
        pytest.fail(f"{SHIPPED_MODEL} must be shipped in models/")
    body = run_to_end(client, ROWS | source | {"batch_sizes": batches})
    result = body["result"]
    env = result["environment"]
    assert env["untrained"] is ("template" in source)
    assert env["model"] == next(iter(source.values()))
    for row in result["rows"]:
        assert row["status"] == "measured", row
        assert row["residency"] in ("cache", "dram")
        # Cache rows are held against a copy of their own footprint, DRAM rows against DRAM:
        # the better of the run's first measure and one taken right after the row.
        if row["residency"] == "dram":
            assert row["working_set_mb"] > env["cache_mb"]
            dram = max(
                env["bandwidth_gb_s"], env["read_bandwidth_gb_s"], env["update_bandwidth_gb_s"]
            )
            assert row["bandwidth_gb_s"] >= dram * (1 - 1e-9)
        else:
            assert row["working_set_mb"] <= env["cache_mb"]
        assert 0 < row["roofline_fraction"] <= 1, row
        # Compute-bound prefill against the matmul peak: a ratio of two timings, so only its
        # definition is checked here (make bench reports it).
        assert row["prefill_fraction"] > 0
        assert row["prefill_fraction"] == pytest.approx(
            row["prefill_gflop_s"] / env["matmul_peak_gflop_s"], rel=1e-6
        )
        assert 0 < row["pair_density"] <= 1 and 0 < row["product_density"] <= 1


def test_template_and_model_are_exclusive(client: httpx.Client) -> None:
    response = client.post(
        "/api/benchmark/run", json=ROWS | {"model": SHIPPED_MODEL, "template": "bdh-tiny"}
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "template"
    response = client.post("/api/benchmark/run", json=ROWS | {"template": "bdh-huge"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "unknown_template"


def test_a_template_run_measures_the_same_untrained_weights_for_a_seed(
    client: httpx.Client,
) -> None:
    bodies = [run_to_end(client, ROWS | {"template": "bdh-nano", "seed": 3}) for _ in range(2)]
    densities = [body["result"]["environment"]["pair_density"] for body in bodies]
    assert densities[0] == densities[1]


def _model(template: str) -> BDH:
    torch.manual_seed(0)
    return BDH(dataclasses.replace(TEMPLATES[template].config, dropout=0.0)).eval()


def test_activation_profile_counts_what_is_non_zero() -> None:
    model = _model("bdh-nano")
    profile = activation_profile(model, tokens=32)
    assert 0 < profile.product_density <= profile.neuron_density <= profile.pair_density <= 1
    with torch.no_grad():  # a model whose encoder never fires: nothing is active
        model.encoder.fill_(-1.0)
        model.embed.weight.fill_(1.0)
    silent = activation_profile(model, tokens=8)
    assert silent.neuron_density == silent.pair_density == silent.product_density == 0.0


def test_decode_traffic_counts_active_state_and_labels_residency() -> None:
    config = TEMPLATES["bdh-small"].config
    L, nh, D, N = config.n_layer, config.n_head, config.n_embd, config.neurons_per_head
    half = ActivationProfile(0.5, 0.5, 0.0, tokens=1)
    one = decode_traffic(config, half, batch=1, weight_element_bytes=4, cache_bytes=2**30)
    state_rw = 2 * 0.5 * N * D * 4 * nh * L
    weights = 2 * nh * D * N * 4
    assert one.residency == "cache"
    assert one.bytes_per_step == pytest.approx(L * weights + D * 4 + D * 256 * 4 + state_rw)
    tight = decode_traffic(config, half, batch=8, weight_element_bytes=4, cache_bytes=2**20)
    assert tight.residency == "dram" and tight.working_set_bytes > 2**20
    dense = decode_traffic(
        config, half, batch=1, weight_element_bytes=4, cache_bytes=2**30, skips_zeros=False
    )
    assert dense.bytes_per_step == pytest.approx(
        one.bytes_per_step + state_rw + L * nh * N * D * 4
    )  # the whole state, and every decoder row


def test_prefill_flops_of_one_chunk_are_the_parallel_forms_less_the_last_layers_rows() -> None:
    config = TEMPLATES["bdh-tiny"].config
    # One chunk from position 0, up to the first token: the parallel form's work, except
    # that the last layer's attention, encoder_v and decoder products and the LM head run
    # for the last position only; the state write q^T x comes after the first token.
    L, nh, D, N, V = 4, config.n_head, config.n_embd, config.neurons_per_head, config.vocab_size
    assert config.n_layer == L
    T = 64
    skipped = (T - 1) * (2 * 2 * D * nh * N + 2 * D * V) + 2 * nh * (T * T - T) * (N + D)
    assert prefill_flops(config, batch=2, context=T, chunk=256) == pytest.approx(
        parallel_flops(config, batch=2, context=T) - 2 * skipped
    )
    assert state_write_flops(config, batch=2, context=T, chunk=256) == 2 * L * 2 * nh * N * T * D
    # Beyond one chunk: earlier chunks write the state at once, the last one defers 44 tokens.
    assert state_write_flops(config, batch=1, context=300, chunk=256) == L * 2 * nh * N * 44 * D
    assert prefill_flops(config, batch=1, context=300, chunk=256) > prefill_flops(
        config, batch=1, context=256, chunk=256
    )
