"""The fused CPU decode kernel: a whole decode step of a batch in one call.

`BDH.decode_step` on the CPU in float32 hands its part of the batch to `decode_rows`, which
runs every layer for every row without returning to Python: embedding and LayerNorms, the
two encoder products, RoPE, the linear-attention read and state update, the sparse decoder
product and the LM head. Compared with one PyTorch operator at a time, that removes about
forty dispatches a step (each needing the GIL the event loop also wants) and the packing a
BLAS does for products of a few rows, and it makes every row's arithmetic independent of
the others: alone or in any batch, a sequence gets bit-identical logits and state.

The heart of it is the state pass. Each (sequence, head) row of a layer does::

    q = rope(phase, xs)        # (N,)  xs = relu(x @ encoder), sparse
    a = q @ S                  # (D,)  reads the state before this token is added
    S += q^T x                 # (N, D)

Batched decode on a CPU is bound by that memory traffic: a sequence of the shipped model
carries 4 MB of state, so 16 sequences do not fit in cache. Two facts make it cheaper:

- q and the update share rows, so one pass reads S[n], adds q[n] * S[n] to `a` and writes
  S[n] + q[n] * x back;
- a RoPE pair (2i, 2i+1) of q is zero when both xs[2i] and xs[2i+1] are zero (ReLU makes many
  pairs so), and then neither its rows of `a` nor of S change: they are skipped.

Which pairs a token touches depends on its activations, so the hardware prefetcher cannot
guess the next one; the kernel lists a row's active pairs first and prefetches a couple of
pairs ahead (`numba_kernels.PREFETCH_AHEAD`), which hides most of the memory latency once the
states outgrow the cache.

Everything is float32 without fast-math reassociation (LayerNorm statistics in float64), so
the logits agree with the PyTorch path to float rounding; the tests hold both paths to each
other and to the parallel form.

The kernels live in `numba_kernels`, compiled by Numba on first use (cached on disk next to
it); they release the GIL while they run, so the event loop keeps serving meanwhile. Without
Numba (or on GPU, or for bfloat16 models) `decode_step` uses the PyTorch path.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

import numpy as np
import torch

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

# HATCHERY_DECODE_KERNEL=torch turns the fused kernel off (for comparisons and debugging).
KERNEL_ENV: Final = "HATCHERY_DECODE_KERNEL"
KERNELS: Final = ("auto", "fused", "torch")

# A decode step of a large batch splits its sequences over threads (`run_split`), at least
# this many sequences each.
MIN_SEQUENCES_PER_THREAD: Final = 4
# The helper threads that run the other parts of a split are one pool for the whole process,
# grown to the largest split asked for: threads are the process's, and every engine and
# scheduler in it shares the cores, so a pool per caller would only multiply idle threads.
# Idle helpers block, never spin. How many threads a step may use is the caller's (each
# engine's `model.decode_threads`), passed with every call.
_helpers: ThreadPoolExecutor | None = None
_helper_count = 0
_helpers_lock = threading.Lock()
_in_part = threading.local()  # .active: this thread runs a part of a split

# A step of a model whose state per sequence is at least MIN_HEAD_SPLIT_STATE_BYTES splits each
# layer by heads rather than by sequence, for batches below MAX_HEAD_SPLIT_BATCH: a state that
# large pays for one hand-off between threads per layer, and every thread then reads only its
# heads' weights, where a split by sequence has each thread read all of them. (bdh-official,
# 2 threads: batch 8 took 72 ms split by heads against 80 by sequence; at 16 the two tie.)
MIN_HEAD_SPLIT_STATE_BYTES: Final = 16 * 2**20
MAX_HEAD_SPLIT_BATCH: Final = 16

_compiled: Any = None  # the numba_kernels module, once loaded
_unavailable: str | None = None


def _compile() -> Any:
    """Load the Numba kernels (raises ImportError without Numba)."""
    from . import numba_kernels  # optional, and slow to import: only when first needed

    return numba_kernels


def _kernel() -> Any:
    global _compiled, _unavailable
    if _compiled is None and _unavailable is None:
        try:
            _compiled = _compile()
        except ImportError as exc:
            _unavailable = f"numba is not installed ({exc})"
            logger.warning("fused decode kernel unavailable: %s; using PyTorch", _unavailable)
    return _compiled


def threads() -> int:
    """The default number of decode threads: one per core (an engine's
    `model.decode_threads` overrides it)."""
    return max(1, os.cpu_count() or 1)


def _pool(helpers: int) -> ThreadPoolExecutor:
    """The process's helper pool, with at least `helpers` threads."""
    global _helpers, _helper_count
    with _helpers_lock:
        if _helpers is None or _helper_count < helpers:
            _helper_count = helpers
            _helpers = ThreadPoolExecutor(_helper_count, thread_name_prefix="hatchery-decode")
        return _helpers


def selected_kernel() -> str:
    """The kernel choice from $HATCHERY_DECODE_KERNEL: auto (default), fused or torch."""
    choice = os.environ.get(KERNEL_ENV, "auto").strip().lower() or "auto"
    if choice not in KERNELS:
        raise ValueError(f"{KERNEL_ENV} must be one of {', '.join(KERNELS)}, got {choice!r}")
    return choice


def fused_applies(state: torch.Tensor, xs: torch.Tensor) -> bool:
    """Whether `decode_step` should take the fused path for this state and activations."""
    choice = selected_kernel()
    if choice == "torch":
        return False
    fits = state.device.type == "cpu" and xs.dtype == torch.float32
    if choice == "fused":
        if not fits:
            raise ValueError("the fused decode kernel needs a float32 model on the CPU")
        _kernels()  # raises when Numba is missing
        return True
    return fits and _kernel() is not None


def split_bounds(batch: int, threads: int) -> list[int]:
    """Where a decode step of `batch` sequences splits over up to `threads` threads:
    [0, ..., batch].

    Batches of fewer than 2 * MIN_SEQUENCES_PER_THREAD sequences stay whole ([0, batch]).
    """
    if threads < 1:
        raise ValueError("threads must be positive")
    parts = max(1, min(threads, batch // MIN_SEQUENCES_PER_THREAD))
    return [batch * i // parts for i in range(parts + 1)]


def run_split(work: Callable[[int, int], _T], batch: int, threads: int) -> list[_T]:
    """`work(begin, end)` for each part of `split_bounds(batch, threads)`, in order
    (`run_parts`)."""
    return run_parts(work, split_bounds(batch, threads))


def run_parts(work: Callable[[int, int], _T], bounds: list[int]) -> list[_T]:
    """`work(bounds[i], bounds[i + 1])` for each part, in order, at the same time.

    The first part runs on the calling thread, the others on the helper threads, in the
    caller's grad and inference mode (both are per thread in PyTorch). The kernels and
    PyTorch's operators release the GIL, so the parts really run in parallel. Splits never
    nest: called from inside a part, this runs `work(bounds[0], bounds[-1])` whole (a part
    waiting on helpers that are busy with its siblings could wait forever).
    """
    if len(bounds) == 2 or getattr(_in_part, "active", False):
        return [work(bounds[0], bounds[-1])]
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def part(begin: int, end: int) -> _T:
        _in_part.active = True
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return work(begin, end)
        finally:
            _in_part.active = False

    pool = _pool(len(bounds) - 2)
    futures = [pool.submit(part, bounds[i], bounds[i + 1]) for i in range(1, len(bounds) - 1)]
    results = [part(bounds[0], bounds[1])]
    results += [future.result() for future in futures]
    return results


def stream(
    source: np.ndarray, target: np.ndarray | None, threads: int, *, update: bool = False
) -> None:
    """Copy float32 `source` into `target` (without one: read it, a sum; with `update`: add 1
    to it in place) in `threads` contiguous parts at the same time, one kernel call per
    thread, as a split decode step uses the cores: what the roofline measures memory
    bandwidth with. One PyTorch operator would use its own intra-op threads instead, which
    may be fewer than the decode's (the server and the tests run PyTorch on one) and made
    fractions above 1. Raises RuntimeError without Numba."""
    kernels = _kernels()
    n = source.shape[0]
    bounds = [n * i // threads for i in range(threads + 1)]
    if update:
        run_parts(lambda b, e: kernels.stream_update(source[b:e]), bounds)
    elif target is None:
        run_parts(lambda b, e: kernels.stream_sum(source[b:e]), bounds)
    else:
        run_parts(lambda b, e: kernels.stream_copy(source[b:e], target[b:e]), bounds)


def sampling_kernels() -> Any:
    """The Numba kernels that sampling runs on (`sampling.sample_rows`), whatever the decode
    path; RuntimeError without Numba, a dependency of the project."""
    return _kernels("sampling")


def available() -> bool:
    """Whether the fused kernels can run here (Numba is installed)."""
    return _kernel() is not None


def rope_cos_sin(positions: torch.Tensor, freqs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """cos and sin (B, N) of the RoPE angles 2*pi*frac(position * f) of B positions, float32.

    The same angles as `model.rope_cos_sin`, computed with NumPy on the calling thread:
    PyTorch runs cos and sin of a few thousand floats as an OpenMP parallel region, and
    libgomp's idle worker then spins for milliseconds, on the core a helper thread of the
    split step needs (it made a batch-1 step of bdh-official 30-40% slower).
    """
    p = positions.numpy().astype(np.float32)[:, None] * freqs.numpy()[None, :]  # (B, N)
    # frac(p) as p - floor(p): exact for p >= 0, so equal to PyTorch's p % 1, and several
    # times faster than NumPy's float remainder
    angles = (p - np.floor(p)) * np.float32(2 * np.pi)
    return torch.from_numpy(np.cos(angles)), torch.from_numpy(np.sin(angles))


def rotate_applies(v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """Whether `rotate` takes `model.rotate`'s work: float32 on the CPU, no gradient wanted,
    angles (..., T, N) shared by every leading row of v (..., T, N), and Numba here."""
    if v.dim() < 2 or v.size(-1) % 2:
        return False
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in (v, cos, sin)):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in (v, cos, sin)):
        return False
    plane = v.shape[-2:]
    if any(t.shape[-2:] != plane or t.numel() != plane.numel() for t in (cos, sin)):
        return False
    return _kernel() is not None


def rotate(v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`model.rotate` in one Numba pass (`numba_kernels.rotate_pairs`), bit-identical: the
    PyTorch form interleaves strided copies and reads v five times, and at bdh-official's
    prefill sizes (4 heads x 256 positions x 8,192 neurons) took 110 ms a layer."""
    T, N = v.shape[-2:]
    rows = v.contiguous().view(-1, T, N)
    out = torch.empty_like(rows)
    angles = (t.contiguous().view(T, N).numpy() for t in (cos, sin))
    _kernels().rotate_pairs(rows.numpy(), *angles, out.numpy())
    return out.view(v.shape)


def decode_rows(
    tokens: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    state: torch.Tensor,
    weights: tuple[torch.Tensor, ...],
) -> torch.Tensor:
    """One whole decode step of B sequences in one kernel call; returns logits (B, V).

    tokens (B,); cos/sin (B, N) of the RoPE angles; state (n_layer, B, nh, N, D) float32,
    updated in place, each layer's part contiguous (a slice of a slot pool along B is);
    weights: embed (V, D), encoder and encoder_v (nh, D, N), decoder (nh*N, D) and
    lm_head (D, V), float32 and contiguous.
    """
    if not all(layer.is_contiguous() for layer in state):
        raise ValueError("the fused decode kernel needs each layer's state contiguous")
    layers = tuple(layer.numpy() for layer in state)
    logits = torch.empty(tokens.size(0), weights[-1].size(1), dtype=torch.float32)
    arrays = (t.contiguous().numpy() for t in (tokens, cos, sin))
    _kernels().decode_rows(*arrays, layers, *(w.numpy() for w in weights), logits.numpy())
    return logits


def head_parts(batch: int, state: torch.Tensor, threads: int) -> int:
    """How many of `threads` threads a step of `batch` sequences splits its layers' heads
    over (1: none, and the step may split by sequence, `split_bounds`).

    Only when a sequence's state is at least MIN_HEAD_SPLIT_STATE_BYTES (a smaller one
    decodes faster on one thread than with a hand-off per layer) and the batch is below
    MAX_HEAD_SPLIT_BATCH; never inside a part of a split.
    """
    heads = state.size(2)
    per_sequence = state[:, :1].numel() * state.element_size()
    if per_sequence < MIN_HEAD_SPLIT_STATE_BYTES or batch >= MAX_HEAD_SPLIT_BATCH:
        return 1
    if getattr(_in_part, "active", False):
        return 1
    return max(1, min(threads, heads))


def decode_rows_by_heads(
    tokens: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    state: torch.Tensor,
    weights: tuple[torch.Tensor, ...],
    parts: int,
) -> torch.Tensor:
    """`decode_rows` with each layer's heads split over `parts` threads; bit-identical to it.

    Per layer every thread runs its heads (`numba_kernels.layer_heads`: state rows of those
    heads only, each head's share of the decoder product kept apart), then the calling
    thread adds the shares in head order (`combine_heads`), which is what the one-call
    kernel does too. One hand-off per layer is the price; the kernels drop the GIL, so the
    parts really run at the same time.
    """
    kernels = _kernels()
    embed, encoder, encoder_v, decoder, lm_head = (w.numpy() for w in weights)
    B, nh, D = tokens.size(0), state.size(2), state.size(4)
    token_ids, c, s = (t.contiguous().numpy() for t in (tokens, cos, sin))
    x = np.empty((B, D), np.float32)
    m_heads = np.empty((nh, B, D), np.float32)
    kernels.embed_rows(token_ids, embed, x)
    bounds = [nh * i // parts for i in range(parts + 1)]
    pool = _pool(parts - 1)
    for layer in state:
        S = layer.numpy()

        def heads(first: int, last: int, S: Any = S) -> None:
            kernels.layer_heads(S, x, c, s, encoder, encoder_v, decoder, first, last, m_heads)

        futures = [pool.submit(heads, bounds[i], bounds[i + 1]) for i in range(1, parts)]
        heads(bounds[0], bounds[1])
        for future in futures:
            future.result()
        kernels.combine_heads(m_heads, x)
    logits = np.empty((B, lm_head.shape[1]), np.float32)
    kernels.matmul_rows(x, lm_head, logits)
    return torch.from_numpy(logits)


def _kernels(user: str = "the fused decode kernel") -> Any:
    kernel = _kernel()
    if kernel is None:
        raise RuntimeError(f"{user} is unavailable: {_unavailable}")
    return kernel
