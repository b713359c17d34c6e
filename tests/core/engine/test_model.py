"""The recurrent form computes exactly what the parallel (official) form computes."""

from __future__ import annotations

import pytest
import torch

from core.engine import BDH, BDHConfig

from .conftest import nano_model


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="n_head"):
        BDHConfig(n_head=0)
    with pytest.raises(ValueError, match="dropout"):
        BDHConfig(dropout=1.5)


def test_state_dict_holds_only_official_parameter_names(nano: BDH) -> None:
    assert set(nano.state_dict()) == {"embed.weight", "encoder", "encoder_v", "decoder", "lm_head"}


@pytest.mark.parametrize("T", [1, 7, 64, 512])
def test_decode_steps_match_parallel_forward(nano: BDH, T: int) -> None:
    idx = torch.randint(0, 256, (2, T), generator=torch.Generator().manual_seed(T))
    reference, _ = nano(idx)  # (B, T, V)
    state = nano.new_state(2)
    steps = [nano.decode_step(idx[:, t], torch.full((2,), t), state) for t in range(T)]
    recurrent = torch.stack(steps, dim=1)
    assert reference.abs().max() > 1.0  # logits are not trivially small
    assert (recurrent - reference).abs().max().item() <= 1e-4


@pytest.mark.parametrize("chunk", [1, 5, 64, 100, 512])
def test_chunked_prefill_equals_whole(nano: BDH, chunk: int) -> None:
    idx = torch.randint(0, 256, (3, 300), generator=torch.Generator().manual_seed(1))
    reference, _ = nano(idx)
    logits, state = nano.prefill(idx, chunk_size=chunk, all_logits=True)
    assert (logits - reference).abs().max().item() <= 1e-4
    whole_logits, whole_state = nano.prefill(idx, chunk_size=10_000)
    assert torch.allclose(state, whole_state, rtol=1e-5, atol=1e-4)
    assert torch.allclose(logits[:, -1], whole_logits, atol=1e-4)


def test_a_prefill_from_position_0_writes_the_state_without_reading_it(nano: BDH) -> None:
    idx = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(8))
    zeros = nano.new_state(2)
    assert zeros.abs().max() == 0
    garbage = nano.new_state(2, zeroed=False).fill_(float("nan"))
    expected = nano.prefill_chunk(idx[:, :24], zeros, 0)
    assert torch.equal(nano.prefill_chunk(idx[:, :24], garbage, 0), expected)
    assert torch.equal(garbage, zeros)
    # later chunks read what the first one wrote
    assert torch.equal(
        nano.prefill_chunk(idx[:, 24:], garbage, 24), nano.prefill_chunk(idx[:, 24:], zeros, 24)
    )
    assert not garbage.isnan().any()


def test_prefill_then_decode_continues_the_sequence(nano: BDH) -> None:
    idx = torch.randint(0, 256, (1, 80), generator=torch.Generator().manual_seed(2))
    reference, _ = nano(idx)
    _, state = nano.prefill(idx[:, :50], chunk_size=16)
    for t in range(50, 80):
        logits = nano.decode_step(idx[:, t], torch.tensor([t]), state)
        assert (logits[0] - reference[0, t]).abs().max().item() <= 1e-4


def test_decode_step_with_a_different_position_per_sequence(nano: BDH) -> None:
    gen = torch.Generator().manual_seed(3)
    a = torch.randint(0, 256, (1, 40), generator=gen)
    b = torch.randint(0, 256, (1, 13), generator=gen)
    ref_a, _ = nano(a)
    ref_b, _ = nano(b)
    _, state_a = nano.prefill(a[:, :-1])
    _, state_b = nano.prefill(b[:, :-1])
    state = torch.cat([state_a, state_b], dim=1)
    logits = nano.decode_step(torch.tensor([a[0, -1], b[0, -1]]), torch.tensor([39, 12]), state)
    assert (logits[0] - ref_a[0, -1]).abs().max().item() <= 1e-4
    assert (logits[1] - ref_b[0, -1]).abs().max().item() <= 1e-4


def test_decode_updates_a_view_of_a_pool_in_place(nano: BDH) -> None:
    pool = nano.new_state(4)
    view = pool[:, :2]
    nano.decode_step(torch.tensor([1, 2]), torch.tensor([0, 0]), view)
    assert pool[:, :2].abs().sum() > 0
    assert pool[:, 2:].abs().sum() == 0


def test_state_is_float32_even_for_bfloat16_weights() -> None:
    model = nano_model(scale=5.0).to(torch.bfloat16)
    idx = torch.randint(0, 256, (1, 16))
    logits, state = model.prefill(idx)
    assert state.dtype == torch.float32
    assert logits.dtype == torch.bfloat16
    reference, _ = nano_model(scale=5.0)(idx)
    assert (logits.float() - reference[:, -1]).abs().max().item() < 0.5


def test_training_forward_returns_loss(nano: BDH) -> None:
    idx = torch.randint(0, 256, (2, 16))
    logits, loss = nano(idx, idx)
    assert logits.shape == (2, 16, 256)
    assert loss is not None and torch.isfinite(loss)
