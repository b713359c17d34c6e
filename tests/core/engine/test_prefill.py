"""The prefill's last chunk: logits first (`BDH.prefill_last`), its state write after
(`StateWrite`), exact against the parallel form and bit-identical to `prefill_chunk`'s."""

from __future__ import annotations

import pytest
import torch

from core.engine import BDH

from .conftest import nano_model


def _prompt(B: int, T: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


def _eager(model: BDH, idx: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The path before the deferral: every chunk writes the state as it goes."""
    state = model.new_state(idx.size(0))
    for begin in range(0, idx.size(1), chunk):
        logits = model.prefill_chunk(idx[:, begin : begin + chunk], state, begin)
    return logits[:, -1], state


@pytest.mark.parametrize("T", [1, 2, 37, 256, 300, 700])
@pytest.mark.parametrize("chunk", [100, 256])
def test_the_last_logits_match_the_parallel_form(nano: BDH, T: int, chunk: int) -> None:
    idx = _prompt(3, T, seed=T)
    reference, _ = nano(idx)
    logits, _ = nano.prefill(idx, chunk_size=chunk)
    assert reference.abs().max() > 1.0
    assert (logits - reference[:, -1]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("T", [1, 40, 256, 300])
@pytest.mark.parametrize("keep", [None, 0, "one layer", "scratch", "scratch for one layer"])
def test_the_deferred_write_gives_the_eager_state_bit_for_bit(
    nano: BDH, T: int, keep: int | str | None
) -> None:
    """Kept queries or queries recomputed from x: the same products on the same inputs, so
    the state, and every decode step after it, equals the eager path's exactly."""
    chunk = 256
    idx = _prompt(2, T, seed=100 + T)
    eager_logits, eager = _eager(nano, idx, chunk)
    last = (T - 1) // chunk * chunk
    state = nano.new_state(2, zeroed=False).fill_(float("nan"))  # position 0 writes all
    for begin in range(0, last, chunk):
        nano.absorb_chunk(idx[:, begin : begin + chunk], state, begin)
    if last:
        assert torch.equal(state, _eager(nano, idx[:, :last], chunk)[1])
    before = state.clone()
    c = nano.config
    layer_bytes = 2 * c.n_head * (T - last) * c.neurons_per_head * 4
    scratch = None
    if keep == "scratch":  # as a lane keeps them: in its prefill buffer (garbage before)
        scratch = nano.new_state(2, zeroed=False).fill_(float("nan"))
    elif keep == "scratch for one layer":
        scratch = torch.full((layer_bytes // 4 + 3,), float("nan"))
    keep_bytes = layer_bytes if keep == "one layer" else keep
    assert keep_bytes is None or isinstance(keep_bytes, int) or scratch is not None
    logits, write = nano.prefill_last(
        idx[:, last:], state, last, keep_bytes=None if scratch is not None else keep_bytes,
        scratch=scratch,
    )  # fmt: skip
    if keep in ("one layer", "scratch for one layer"):
        assert write.kept_bytes == layer_bytes  # the other layer recomputes its queries
    # read, not written
    assert torch.equal(state, before) if last else bool(state.isnan().all())
    assert (logits - eager_logits).abs().max().item() <= 1e-5
    write.apply(state)
    assert torch.equal(state, eager)
    tokens, positions = torch.tensor([7, 9]), torch.full((2,), T)
    for _ in range(3):
        new_logits = nano.decode_step(tokens, positions, state)
        assert torch.equal(new_logits, nano.decode_step(tokens, positions, eager))
        tokens, positions = new_logits.argmax(-1), positions + 1
    with pytest.raises(RuntimeError, match="once"):
        write.apply(state)


def test_kept_queries_stay_within_their_bytes(nano: BDH) -> None:
    idx = _prompt(1, 200, seed=3)
    layer_bytes = nano.config.n_head * 200 * nano.config.neurons_per_head * 4
    for keep, layers in [(0, 0), (layer_bytes, 1), (layer_bytes * 10, nano.config.n_layer)]:
        _, write = nano.prefill_last(idx, None, 0, keep_bytes=keep)
        assert write.kept_bytes == layers * layer_bytes <= keep
    # By default at most one state's worth: at C <= D every layer's queries.
    big = _prompt(1, nano.config.n_embd, seed=4)
    _, write = nano.prefill_last(big, None, 0)
    assert write.kept_bytes == nano.config.state_numel() * 4


def test_scratch_must_be_contiguous_float32(nano: BDH) -> None:
    idx = _prompt(1, 4, seed=9)
    for bad in (torch.zeros(64, dtype=torch.float64), torch.zeros(8, 8).t()):
        with pytest.raises(ValueError, match="scratch"):
            nano.prefill_last(idx, None, 0, scratch=bad)


def test_a_later_chunk_needs_the_state_it_reads(nano: BDH) -> None:
    with pytest.raises(ValueError, match="reads the state"):
        nano.prefill_last(_prompt(1, 4, seed=5), None, 10)


def test_a_sequence_gets_the_same_bits_alone_or_in_a_batch(nano: BDH) -> None:
    idx = _prompt(4, 300, seed=6)
    batched_logits, batched_state = nano.prefill(idx)
    alone_logits, alone_state = nano.prefill(idx[2:3])
    assert torch.equal(batched_logits[2], alone_logits[0])
    assert torch.equal(batched_state[:, 2], alone_state[:, 0])


def test_absorb_chunk_updates_the_state_as_prefill_chunk_does(nano: BDH) -> None:
    idx = _prompt(2, 90, seed=7)
    a, b = nano.new_state(2), nano.new_state(2)
    for begin in (0, 30, 60):
        nano.prefill_chunk(idx[:, begin : begin + 30], a, begin)
        nano.absorb_chunk(idx[:, begin : begin + 30], b, begin)
    assert torch.equal(a, b)


def test_bfloat16_weights_keep_a_float32_state_through_the_deferred_write() -> None:
    model = nano_model(scale=5.0).to(torch.bfloat16)
    idx = _prompt(1, 300, seed=8)
    logits, state = model.prefill(idx)
    assert state.dtype == torch.float32 and logits.dtype == torch.bfloat16
    _, eager = _eager(model, idx, 256)
    assert torch.equal(state, eager)
    reference, _ = nano_model(scale=5.0)(idx)
    assert (logits.float() - reference[:, -1]).abs().max().item() < 0.5
