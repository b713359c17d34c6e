"""The fused CPU decode kernel against the PyTorch path and the parallel form."""

from __future__ import annotations

import pytest
import torch

from core.engine import BDH, kernels, numba_kernels
from core.engine.model import rotate

from .conftest import nano_model


def _decode(
    model: BDH,
    kernel: str,
    monkeypatch: pytest.MonkeyPatch,
    steps: int,
    batch: int,
    threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`steps` greedy decode steps of `batch` sequences from prompts of different lengths."""
    monkeypatch.setenv(kernels.KERNEL_ENV, kernel)
    gen = torch.Generator().manual_seed(batch)
    state = model.new_state(batch)
    lengths = [5 + 7 * i for i in range(batch)]
    for row, length in enumerate(lengths):
        prompt = torch.randint(0, 256, (1, length), generator=gen)
        _, state_row = model.prefill(prompt)
        state[:, row] = state_row[:, 0]
    tokens = torch.randint(0, 256, (batch,), generator=gen)
    positions = torch.tensor(lengths)
    outputs = []
    for _ in range(steps):
        logits = model.decode_step(tokens, positions, state, threads=threads)  # (B, V)
        outputs.append(logits)
        tokens, positions = logits.argmax(dim=-1), positions + 1
    return torch.stack(outputs, dim=1), state  # (B, steps, V)


@pytest.mark.parametrize(("batch", "threads"), [(1, 1), (3, 1), (9, 2), (12, 3)])
def test_fused_path_matches_the_pytorch_path(
    monkeypatch: pytest.MonkeyPatch, batch: int, threads: int
) -> None:
    model = nano_model(scale=5.0)  # 9 and 12 sequences split over helper threads
    reference, reference_state = _decode(model, "torch", monkeypatch, 12, batch, threads)
    fused, fused_state = _decode(model, "fused", monkeypatch, 12, batch, threads)
    assert reference.abs().max() > 1.0
    assert (fused - reference).abs().max().item() <= 1e-4
    scale = reference_state.abs().max().item()
    assert (fused_state - reference_state).abs().max().item() <= 1e-5 * scale


def test_fused_decode_matches_the_parallel_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kernels.KERNEL_ENV, "fused")
    model = nano_model(scale=5.0)
    idx = torch.randint(0, 256, (2, 96), generator=torch.Generator().manual_seed(4))
    reference, _ = model(idx)  # (B, T, V)
    state = model.new_state(2)
    steps = [model.decode_step(idx[:, t], torch.full((2,), t), state) for t in range(96)]
    assert (torch.stack(steps, dim=1) - reference).abs().max().item() <= 1e-4


@pytest.mark.parametrize("threads", [1, 2])
def test_a_sequence_decodes_the_same_alone_or_in_a_split_batch(
    monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    """Rows never mix, however the batch is split (or not): the kernel computes each row on
    its own."""
    monkeypatch.setenv(kernels.KERNEL_ENV, "fused")
    model = nano_model(scale=5.0)
    batch = model.new_state(8)
    prompt = torch.randint(0, 256, (1, 30), generator=torch.Generator().manual_seed(5))
    _, alone = model.prefill(prompt)
    batch[:, 6] = alone[:, 0]
    tokens = torch.randint(0, 256, (8,), generator=torch.Generator().manual_seed(6))
    positions = torch.full((8,), 30)
    batched = model.decode_step(tokens, positions, batch, threads=threads)[6]
    single = model.decode_step(tokens[6:7], positions[6:7], alone, threads=threads)[0]
    assert torch.equal(batched, single)
    assert torch.equal(batch[:, 6], alone[:, 0])


@pytest.mark.parametrize("threads", [2, 3])
def test_a_split_step_computes_what_the_whole_batch_would(
    monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    """Every part runs the whole step for its rows, to the bit."""
    model = nano_model(scale=5.0)
    whole, whole_state = _decode(model, "fused", monkeypatch, steps=6, batch=12, threads=1)
    assert len(kernels.split_bounds(12, threads)) == threads + 1
    with torch.inference_mode():  # the helpers take the caller's mode
        split, split_state = _decode(model, "fused", monkeypatch, 6, 12, threads)
    assert torch.equal(split, whole)
    assert torch.equal(split_state, whole_state)


def test_split_bounds() -> None:
    assert kernels.split_bounds(1, 2) == [0, 1]
    assert kernels.split_bounds(7, 2) == [0, 7]  # fewer than 4 sequences per thread: whole
    assert kernels.split_bounds(9, 2) == [0, 4, 9]
    assert kernels.split_bounds(16, 4) == [0, 4, 8, 12, 16]
    assert kernels.run_split(lambda b, e: (b, e), 12, 4) == [(0, 4), (4, 8), (8, 12)]


def test_splits_do_not_nest() -> None:
    """A split inside a part runs whole, even with every helper busy (no deadlock)."""

    def outer(begin: int, end: int) -> list[tuple[int, int]]:
        return kernels.run_split(lambda b, e: (begin + b, begin + e), end - begin, 2)

    assert kernels.run_split(outer, 16, 2) == [[(0, 8)], [(8, 16)]]
    assert kernels.run_split(lambda b, e: (b, e), 8, 2) == [(0, 4), (4, 8)]  # guard reset


def test_sparse_decode_head_equals_the_dense_product() -> None:
    gen = torch.Generator().manual_seed(7)
    xs = torch.relu(torch.randn(5, 32, generator=gen))  # (B, N) of one head
    ys = torch.randn(5, 32, generator=gen)  # (B, N) before the ReLU
    decoder = torch.randn(32, 16, generator=gen)  # the head's (N, D) rows
    expected = (xs * torch.relu(ys)) @ decoder
    m = torch.empty(5, 16)
    numba_kernels.sparse_decode_head(xs.numpy(), ys.numpy(), decoder.numpy(), m.numpy())
    assert torch.allclose(m, expected, atol=1e-5)
    for b in range(5):  # each row alone gets the sums it gets in the batch
        alone = torch.empty(1, 16)
        numba_kernels.sparse_decode_head(
            xs[b : b + 1].numpy(), ys[b : b + 1].numpy(), decoder.numpy(), alone.numpy()
        )
        assert torch.equal(alone[0], m[b])
    zeros = torch.zeros(5, 32).numpy()
    numba_kernels.sparse_decode_head(zeros, ys.numpy(), decoder.numpy(), m.numpy())
    assert m.abs().max() == 0


def test_stream_copies_in_parts_on_every_thread() -> None:
    source = torch.arange(10_001, dtype=torch.float32).numpy()
    target = torch.zeros(10_001).numpy()
    kernels.stream(source, target, 3)
    assert (target == source).all()
    kernels.stream(source, None, 3)  # the read: a sum of each part
    kernels.stream(target, None, 3, update=True)  # in place: + 1
    assert (target == source + 1).all()
    assert numba_kernels.stream_sum(source[:4]) == 6.0
    assert kernels.run_parts(lambda b, e: (b, e), [0, 2, 5, 9]) == [(0, 2), (2, 5), (5, 9)]


def _prefilled(model: BDH, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    _, state = model.prefill(torch.randint(0, 256, (batch, 23), generator=gen))
    tokens = torch.randint(0, 256, (batch,), generator=gen)
    return tokens, torch.full((batch,), 23), state


@pytest.mark.parametrize("parts", [2, 3, 4])
def test_a_step_split_by_heads_is_bit_identical_to_the_whole_step(parts: int) -> None:
    model = nano_model(scale=5.0)
    tokens, positions, state = _prefilled(model, batch=2)
    whole_state, split_state = state.clone(), state.clone()
    whole = model._decode_rows(tokens, positions, whole_state, True)
    for _ in range(3):  # the states stay identical too, step after step
        split = model._decode_rows(tokens, positions, split_state, True, head_parts=parts)
        assert torch.equal(split, whole) and torch.equal(split_state, whole_state)
        tokens, positions = whole.argmax(dim=-1), positions + 1
        whole = model._decode_rows(tokens, positions, whole_state, True)


def test_head_parts_split_batches_below_sixteen_of_a_large_state() -> None:
    big = torch.empty(1, 1, 4, 2**12, 2**10)  # 64 MiB a sequence
    small = torch.empty(1, 1, 4, 64, 64)
    assert kernels.head_parts(1, big, 2) == 2 and kernels.head_parts(4, big, 2) == 2
    assert kernels.head_parts(8, big, 2) == 2  # one read of each head's weights
    assert kernels.head_parts(kernels.MAX_HEAD_SPLIT_BATCH, big, 2) == 1  # by sequence
    assert kernels.head_parts(1, small, 2) == 1  # not worth a hand-off per layer
    assert kernels.head_parts(1, big, 8) == 4  # never more parts than heads


def test_decode_step_splits_a_lone_large_sequence_by_heads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kernels, "MIN_HEAD_SPLIT_STATE_BYTES", 0)  # bdh-nano counts as large
    calls: list[int] = []
    by_heads = kernels.decode_rows_by_heads
    monkeypatch.setattr(
        kernels,
        "decode_rows_by_heads",
        lambda *args: calls.append(args[-1]) or by_heads(*args),
    )
    model = nano_model(scale=5.0)
    tokens, positions, state = _prefilled(model, batch=1)
    alone = state.clone()
    split = model.decode_step(tokens, positions, state, threads=2)
    assert calls == [2]
    assert torch.equal(split, model.decode_step(tokens, positions, alone, threads=1))
    assert torch.equal(state, alone)


def test_matmul_rows_is_the_product_and_ignores_the_other_rows() -> None:
    gen = torch.Generator().manual_seed(8)
    rows, weight = torch.randn(6, 40, generator=gen), torch.randn(40, 24, generator=gen)
    out, alone = torch.empty(6, 24), torch.empty(1, 24)
    numba_kernels.matmul_rows(rows.numpy(), weight.numpy(), out.numpy())
    assert torch.allclose(out, rows @ weight, atol=1e-5)
    numba_kernels.matmul_rows(rows[4:5].numpy(), weight.numpy(), alone.numpy())
    assert torch.equal(alone[0], out[4])
    # K = 40: five passes of eight rows, then none left over; 43 leaves three. Either way
    # each element is the float32 sum over k in order, term by term.
    for K in (40, 43):
        rows, weight = torch.randn(3, K, generator=gen), torch.randn(K, 24, generator=gen)
        expected = torch.zeros(3, 24)
        for k in range(K):
            expected = expected + rows[:, k : k + 1] * weight[k]
        out = torch.empty(3, 24)
        numba_kernels.matmul_rows(rows.numpy(), weight.numpy(), out.numpy())
        assert torch.equal(out, expected)


def test_layer_norm_row_matches_torch() -> None:
    v = torch.randn(128, generator=torch.Generator().manual_seed(9)) * 3 + 1
    out = torch.empty(128)
    numba_kernels.layer_norm_row(v.numpy(), out.numpy())
    assert torch.allclose(out, torch.nn.functional.layer_norm(v, (128,), eps=1e-5), atol=1e-6)


def test_the_kernel_refuses_a_state_it_cannot_update_in_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(kernels.KERNEL_ENV, "fused")
    model = nano_model(scale=5.0)
    C = model.config
    wide = torch.zeros(C.n_layer, 2, C.n_head, C.neurons_per_head, 2 * C.n_embd)
    with pytest.raises(ValueError, match="contiguous"):  # every other float of each row
        model.decode_step(torch.tensor([1, 2]), torch.tensor([0, 0]), wide[..., ::2])


def test_kernel_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    state = torch.zeros(1, 1, 1, 2, 2)
    x32, x16 = torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.bfloat16)
    monkeypatch.delenv(kernels.KERNEL_ENV, raising=False)
    assert kernels.fused_applies(state, x32)
    assert not kernels.fused_applies(state, x16)  # bfloat16 models take the PyTorch path
    monkeypatch.setenv(kernels.KERNEL_ENV, "torch")
    assert not kernels.fused_applies(state, x32)
    monkeypatch.setenv(kernels.KERNEL_ENV, "fused")
    with pytest.raises(ValueError, match="float32 model on the CPU"):
        kernels.fused_applies(state, x16)
    monkeypatch.setenv(kernels.KERNEL_ENV, "fast")
    with pytest.raises(ValueError, match="HATCHERY_DECODE_KERNEL must be one of"):
        kernels.fused_applies(state, x32)
    with pytest.raises(ValueError, match="positive"):
        kernels.split_bounds(8, 0)


def test_bfloat16_model_decodes_through_the_pytorch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(kernels.KERNEL_ENV, raising=False)
    model = nano_model(scale=5.0).to(torch.bfloat16)
    state = model.new_state(2)
    logits = model.decode_step(torch.tensor([1, 2]), torch.tensor([0, 0]), state)
    assert logits.dtype == torch.bfloat16 and state.abs().sum() > 0


def _rotate_by_pytorch(v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`model.rotate`'s PyTorch form, spelled out."""
    v_rot = torch.stack((-v[..., 1::2], v[..., ::2]), dim=-1).view(*v.size())
    return v * cos + v_rot * sin


@pytest.mark.parametrize("shape", [(1, 4, 7, 512), (2, 3, 33, 64), (1, 1, 1, 2)])
def test_rotate_in_numba_is_bit_identical_to_pytorch(shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(sum(shape))
    v = torch.relu(torch.randn(*shape, generator=gen))
    phases = torch.rand(1, 1, *shape[2:], generator=gen) * 50
    cos, sin = torch.cos(phases), torch.sin(phases)
    with torch.inference_mode():
        assert kernels.rotate_applies(v, cos, sin)
        assert torch.equal(kernels.rotate(v, cos, sin), _rotate_by_pytorch(v, cos, sin))


def test_rotate_keeps_pytorch_where_gradients_or_other_shapes_are_wanted() -> None:
    v = torch.randn(2, 4, 3, 8, requires_grad=True)
    cos, sin = torch.cos(torch.rand(1, 1, 3, 8)), torch.sin(torch.rand(1, 1, 3, 8))
    assert not kernels.rotate_applies(v, cos, sin)  # training: autograd needs the operators
    with torch.no_grad():
        assert kernels.rotate_applies(v, cos, sin)
        assert not kernels.rotate_applies(v, cos[..., :1, :], sin[..., :1, :])  # broadcast T
        assert not kernels.rotate_applies(v.double(), cos.double(), sin.double())
    rotate(v, cos, sin).sum().backward()
    assert v.grad is not None
