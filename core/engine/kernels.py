"""The fused CPU decode kernel: RoPE, the linear-attention read and the state update in one pass.

For one decode step, each (sequence, head) row of a layer does, in the order of
`BDH.decode_step`::

    q = rope(phase, xs)        # (N,)  xs = relu(x @ encoder), about 1/3 of it non-zero
    a = q @ S                  # (D,)  reads the state before this token is added
    S += q^T x                 # (N, D)

With PyTorch that is three passes over the float32 state (two reads, one write) plus five
element-wise RoPE ops. Batched decode on a CPU is bound by exactly that memory traffic: a
sequence of the shipped model carries 4 MB of state, so 16 sequences do not fit in cache.
Two facts make it cheaper:

- q and the update share rows, so one pass can read S[n], add q[n] * S[n] to `a` and write
  S[n] + q[n] * x back;
- a RoPE pair (2i, 2i+1) of q is zero when both xs[2i] and xs[2i+1] are zero (ReLU makes about
  half the pairs so), and then neither its rows of `a` nor of S change: they are skipped.

Which pairs a token touches depends on its activations, so the hardware prefetcher cannot
guess the next one; the kernel lists a row's active pairs first and prefetches a couple of
pairs ahead (`numba_kernels.PREFETCH_AHEAD`), which hides most of the memory latency once the
states outgrow the cache (about 17% off a 16-sequence decode step here).

The result is the same arithmetic as the PyTorch path (products and sums in the same order,
in float32, no fast-math reassociation), so the logits agree to float rounding; the tests hold
both paths to each other and to the parallel form.

The kernels live in `numba_kernels`, compiled by Numba on first use (cached on disk next to
it, about 1 s the first time); they release the GIL while they run, so the event loop keeps
serving meanwhile. Without Numba (or on GPU, or for bfloat16 models) `decode_step` uses the
PyTorch path.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeVar

import torch

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

# HATCHERY_DECODE_KERNEL=torch turns the fused kernel off (for comparisons and debugging).
KERNEL_ENV: Final = "HATCHERY_DECODE_KERNEL"
KERNELS: Final = ("auto", "fused", "torch")

# A decode step of a large batch splits its sequences over this many threads (`run_split`;
# helpers block, never spin).
MIN_SEQUENCES_PER_THREAD: Final = 4
_threads = max(1, os.cpu_count() or 1)
_helpers: ThreadPoolExecutor | None = None
_helper_count = 0
_helpers_lock = threading.Lock()
_in_part = threading.local()  # .active: this thread runs a part of a split

_compiled: tuple[Callable[..., None], Callable[..., None]] | None = None
_unavailable: str | None = None


def _compile() -> tuple[Callable[..., None], Callable[..., None]]:
    """Load the Numba kernels (raises ImportError without Numba)."""
    from . import numba_kernels  # optional, and slow to import: only when first needed

    return numba_kernels.rope_attend_update, numba_kernels.sparse_decode


def _kernel() -> tuple[Callable[..., None], Callable[..., None]] | None:
    global _compiled, _unavailable
    if _compiled is None and _unavailable is None:
        try:
            _compiled = _compile()
        except ImportError as exc:
            _unavailable = f"numba is not installed ({exc})"
            logger.warning("fused decode kernel unavailable: %s; using PyTorch", _unavailable)
    return _compiled


def set_threads(threads: int | None) -> None:
    """Threads the state kernel may split a large batch over; None: one per core."""
    global _threads
    if threads is not None and threads < 1:
        raise ValueError("threads must be positive")
    _threads = threads or max(1, os.cpu_count() or 1)


def threads() -> int:
    """Threads the state kernel may split a large batch over."""
    return _threads


def _pool() -> ThreadPoolExecutor:
    global _helpers, _helper_count
    with _helpers_lock:
        if _helpers is None or _helper_count < _threads - 1:
            _helper_count = _threads - 1
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


def split_bounds(batch: int) -> list[int]:
    """Where a decode step of `batch` sequences splits over threads: [0, ..., batch].

    Batches of fewer than 2 * MIN_SEQUENCES_PER_THREAD sequences stay whole ([0, batch]).
    """
    parts = max(1, min(_threads, batch // MIN_SEQUENCES_PER_THREAD))
    return [batch * i // parts for i in range(parts + 1)]


def run_split(work: Callable[[int, int], _T], batch: int) -> list[_T]:
    """`work(begin, end)` for each part of `split_bounds(batch)`, in order of the parts.

    The first part runs on the calling thread, the others at the same time on the helper
    threads, in the caller's grad and inference mode (both are per thread in PyTorch). The
    kernels and PyTorch's operators release the GIL, so the parts really run in parallel.
    Splits never nest: called from inside a part, this runs `work(0, batch)` whole (a part
    waiting on helpers that are busy with its siblings could wait forever).
    """
    bounds = split_bounds(batch)
    if len(bounds) == 2 or getattr(_in_part, "active", False):
        return [work(0, batch)]
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def part(begin: int, end: int) -> _T:
        _in_part.active = True
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return work(begin, end)
        finally:
            _in_part.active = False

    futures = [_pool().submit(part, bounds[i], bounds[i + 1]) for i in range(1, len(bounds) - 1)]
    results = [part(bounds[0], bounds[1])]
    results += [future.result() for future in futures]
    return results


def rope_attend_update_(
    state: torch.Tensor, xs: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """One layer of one decode step; `state` (B, nh, N, D) is updated in place.

    xs (B, nh, N) = relu(x @ encoder), cos/sin (B, N) of the RoPE angles, x (B, D); all
    float32 on the CPU. Returns the attention read a (B, nh, D).
    """
    B, nh, N, D = state.shape
    if not state.is_contiguous():
        raise ValueError("the fused decode kernel needs a contiguous state")
    out = torch.empty(B, nh, D, dtype=torch.float32)
    S, q, c, s, v, o = (t.contiguous().numpy() for t in (state, xs, cos, sin, x, out))
    _kernels()[0](S.reshape(-1, N, D), q.reshape(-1, N), c, s, v, nh, o.reshape(-1, D))
    return out


def sparse_decode(xs: torch.Tensor, ys: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
    """m = (xs * ys) @ decoder, reading only the decoder rows of non-zero products.

    xs, ys (B, nh*N) float32 are both ReLU outputs: about 1 product in 10 is non-zero, so
    this reads a tenth of the decoder a dense matmul would. decoder (nh*N, D); returns (B, D).
    """
    m = torch.empty(xs.size(0), decoder.size(1), dtype=torch.float32)
    _kernels()[1](*(t.contiguous().numpy() for t in (xs, ys, decoder)), m.numpy())
    return m


def _kernels() -> tuple[Callable[..., None], Callable[..., None]]:
    kernels = _kernel()
    if kernels is None:
        raise RuntimeError(f"the fused decode kernel is unavailable: {_unavailable}")
    return kernels
