"""What a decode step really moves, and the machine limits it is held against.

The fused decode kernel skips what is zero: a RoPE pair of the state whose two activations are
both zero is neither read nor written, and a decoder row whose product xs * ys is zero is not
read. So the bytes a step moves depend on the model's activation density, which training
changes (trained models are sparser, so faster). `activation_profile` measures the densities
on a forward pass of the model itself; `decode_traffic` turns them into bytes per step and a
working set; the working set against the last-level cache says whether the row is
*cache*-resident or *DRAM*-resident; and `MachineLimits` measures, in the same run, what the
row is compared with: the DRAM read, copy and in-place update bandwidth (the best of the three),
the copy bandwidth of a buffer the size
of a cache-resident working set, and a float32 matmul peak for the compute-bound prefill.

A roofline fraction above 1 would mean the traffic model counts bytes the kernel does not
move; the tests hold the shipped and template models to <= 1.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from core.engine import kernels
from core.engine.model import BDH, BDHConfig

Residency = Literal["cache", "dram"]
STATE_BYTES_PER_FLOAT = 4  # the recurrent state is float32 whatever the weights' dtype
DEFAULT_LLC_BYTES = 32 * 2**20  # when the cache size cannot be read (not Linux)


@dataclass(frozen=True)
class ActivationProfile:
    """Densities of one model's sparse activations, over every layer and head."""

    neuron_density: float  # share of xs = relu(x @ encoder) that is non-zero
    pair_density: float  # share of RoPE pairs of xs with a non-zero member: state rows touched
    product_density: float  # share of xs * ys that is non-zero: decoder rows read
    tokens: int


@torch.no_grad()
def activation_profile(model: BDH, *, tokens: int = 256, seed: int = 0) -> ActivationProfile:
    """Measure the densities on `tokens` random bytes through the parallel form."""
    generator = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, model.config.vocab_size, (1, tokens), generator=generator)
    counts = torch.zeros(4, dtype=torch.float64)  # neurons, active, active pairs, products

    def observe(xs: torch.Tensor, ys: torch.Tensor) -> None:
        active = xs > 0  # (B, nh, T, N)
        pairs = active[..., 0::2] | active[..., 1::2]
        counts.add_(
            torch.tensor(
                [active.numel(), active.sum(), pairs.sum(), (active & (ys > 0)).sum()],
                dtype=torch.float64,
            )
        )

    model(idx.to(model.lm_head.device), observe=observe)
    total, active, pairs, products = counts.tolist()
    return ActivationProfile(
        neuron_density=active / total,
        pair_density=2 * pairs / total,
        product_density=products / total,
        tokens=tokens,
    )


@dataclass(frozen=True)
class StepTraffic:
    """Bytes one decode step of `batch` sequences moves, and the footprint it reuses."""

    batch: int
    bytes_per_step: float
    working_set_bytes: float
    residency: Residency

    @property
    def bytes_per_token(self) -> float:
        return self.bytes_per_step / self.batch


def decode_traffic(
    config: BDHConfig,
    profile: ActivationProfile,
    *,
    batch: int,
    weight_element_bytes: int,
    cache_bytes: int,
    skips_zeros: bool = True,
) -> StepTraffic:
    """The fused kernel's traffic for one step, from the measured densities.

    Per layer it reads the whole encoder and encoder_v once for the batch (dense products),
    the decoder rows some sequence of the batch needs (the union, for independent rows), and
    per sequence it reads and writes the state rows of its active pairs. The embedding rows
    and the LM head are read once a step. The working set is what a step touches and the next
    one touches again: the weights it reads and every sequence's active state. When that fits
    the last-level cache, the row is cache-resident and every access counts; otherwise the
    states stream from DRAM each step, and the weights count once a step if they alone fit
    the cache (later layers reuse them), else once per layer. A path that does not skip
    zeros (`skips_zeros=False`: the PyTorch path) moves the whole state and decoder.
    """
    L, nh, D, N, V = (
        config.n_layer,
        config.n_head,
        config.n_embd,
        config.neurons_per_head,
        config.vocab_size,
    )
    e = weight_element_bytes
    pairs = profile.pair_density if skips_zeros else 1.0
    union = 1.0 - (1.0 - profile.product_density) ** batch if skips_zeros else 1.0
    per_layer_weights = 2 * nh * D * N * e + union * nh * N * D * e
    step_weights = batch * D * e + D * V * e  # embedding rows, LM head
    state_rw = 2 * pairs * N * D * STATE_BYTES_PER_FLOAT * nh * L  # per sequence
    working_set = per_layer_weights + step_weights + batch * state_rw / 2
    if working_set <= cache_bytes:
        moved = L * per_layer_weights + step_weights + batch * state_rw
        return StepTraffic(batch, moved, working_set, "cache")
    weights_once = per_layer_weights + step_weights <= cache_bytes
    weights = per_layer_weights + step_weights if weights_once else L * per_layer_weights
    return StepTraffic(batch, weights + batch * state_rw, working_set, "dram")


def prefill_flops(config: BDHConfig, *, batch: int, context: int, chunk: int) -> float:
    """Floating-point operations of a chunked recurrent prefill of `context` tokens, up to
    the first token's logits: what its time to first token pays for.

    Earlier chunks write the state (S += q^T x, plus q @ S after chunk 0) and skip the LM
    head; the last one reads the state but defers its write (`state_write_flops`), and its
    last layer finishes the last position only (after the encoder product of every row).
    """
    nh, D, N, V = config.n_head, config.n_embd, config.neurons_per_head, config.vocab_size
    total = 0.0
    for begin in range(0, context, chunk):
        c = min(chunk, context - begin)
        last = begin + c == context
        read = 2 * nh * N * c * D if begin else 0  # q @ S
        write = 0 if last else 2 * nh * N * c * D  # S += q^T x
        layer = (
            3 * 2 * c * D * nh * N  # x @ encoder, a @ encoder_v, (xs * ys) @ decoder
            + 2 * nh * c * c * (N + D)  # q q^T and its product with x, within the chunk
            + read
            + write
        )
        total += (config.n_layer - 1 if last else config.n_layer) * layer
        if last:  # the last layer: every row's encoder product, then one row
            total += 2 * c * D * nh * N + 2 * nh * c * (N + D) + read / c
            total += 2 * 2 * D * nh * N + 2 * D * V  # encoder_v, decoder; the LM head
    return batch * total


def state_write_flops(config: BDHConfig, *, batch: int, context: int, chunk: int) -> float:
    """Floating-point operations of the last chunk's deferred state write (q^T x per layer
    and head, from the kept queries), paid after the first token."""
    c = (context - 1) % chunk + 1
    C = config
    return batch * C.n_layer * 2 * C.n_head * C.neurons_per_head * c * C.n_embd


def parallel_flops(config: BDHConfig, *, batch: int, context: int) -> float:
    """Floating-point operations of one parallel forward over `context` tokens."""
    nh, D, N, V = config.n_head, config.n_embd, config.neurons_per_head, config.vocab_size
    T = context
    layer = 3 * 2 * T * D * nh * N + 2 * nh * T * T * (N + D)
    return batch * (config.n_layer * layer + 2 * T * D * V)


# The machine --------------------------------------------------------------------------------


@functools.cache
def last_level_cache_bytes() -> int:
    """The largest cache of CPU 0 (Linux sysfs), else a common size."""
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = entry.read_text().strip().upper()
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=DEFAULT_LLC_BYTES)


def _best_time(run: Callable[[], object], repeats: int, device: torch.device) -> float:
    """The fastest of `repeats` runs: a limit is what the machine can do, and load on a shared
    machine only ever slows a run down."""
    timings = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        run()
        _sync(device)
        timings.append(time.perf_counter() - started)
    return max(min(timings), 1e-12)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(
    device: torch.device, *, footprint_bytes: int, repeats: int = 7, threads: int = 1
) -> float:
    """Bytes/s of a copy whose source and target together take `footprint_bytes` (so it
    moves that many bytes: each read once and written once).

    On the CPU with `threads` > 1 it is the better of one PyTorch copy (its own intra-op
    threads) and `threads` copies of contiguous parts at the same time (the decode kernel's
    way of using the cores, `kernels.stream`).
    """
    n = max(1024, footprint_bytes // 8)
    source = torch.ones(n, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    target.copy_(source)  # first touch: page faults stay out of the timing
    seconds = _best_time(lambda: target.copy_(source), repeats, device)
    if _parallel(device, threads):
        src, dst = source.numpy(), target.numpy()
        seconds = min(seconds, _best_stream(src, dst, threads, repeats))
    return 2 * n * 4 / seconds


def read_bandwidth(
    device: torch.device, *, footprint_bytes: int, repeats: int = 7, threads: int = 1
) -> float:
    """Bytes/s of summing a float32 buffer of `footprint_bytes` (a pure read); on the CPU
    with `threads` > 1, the better of one PyTorch sum and `threads` sums of parts at once."""
    n = max(1024, footprint_bytes // 4)
    source = torch.ones(n, dtype=torch.float32, device=device)
    source.sum()
    seconds = _best_time(source.sum, repeats, device)
    if _parallel(device, threads):
        seconds = min(seconds, _best_stream(source.numpy(), None, threads, repeats))
    return n * 4 / seconds


def update_bandwidth(
    device: torch.device, *, footprint_bytes: int, repeats: int = 7, threads: int = 1
) -> float:
    """Bytes/s (read plus written) of adding 1 in place to a float32 buffer of
    `footprint_bytes`: the state pass's pattern, each line read and written back.

    It moves more than a copy of the same bytes can, since a copy also reads each target
    line before writing it (the write-allocate a copy's own count leaves out): on the 2-core
    machine of issue 17, 64 GB/s against a copy's 45, measured side by side. Without it, a
    kernel that updates its state in place beat the "limit" (fractions of 1.02 were seen).
    On the CPU with `threads` > 1, the better of one PyTorch add and `threads` at once.
    """
    n = max(1024, footprint_bytes // 4)
    buffer = torch.ones(n, dtype=torch.float32, device=device)
    buffer.add_(1.0)
    seconds = _best_time(lambda: buffer.add_(1.0), repeats, device)
    if _parallel(device, threads):
        seconds = min(seconds, _best_stream(buffer.numpy(), None, threads, repeats, update=True))
    return 2 * n * 4 / seconds


def _best_stream(
    source: Any, target: Any, threads: int, repeats: int, *, update: bool = False
) -> float:
    """The fastest of `repeats` runs of `kernels.stream`, after one that compiles the kernel
    and wakes the helper threads."""
    kernels.stream(source, target, threads, update=update)
    cpu = torch.device("cpu")
    return _best_time(lambda: kernels.stream(source, target, threads, update=update), repeats, cpu)


def _parallel(device: torch.device, threads: int) -> bool:
    """Whether to measure with `threads` kernel threads too (the CPU, with Numba)."""
    return device.type == "cpu" and threads > 1 and kernels.available()


def matmul_peak(device: torch.device, *, size: int = 1024, repeats: int = 7) -> float:
    """FLOP/s of a float32 (size x size) @ (size x size) product: the compute roofline."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    return 2 * size**3 / _best_time(lambda: a @ b, repeats, device)


@dataclass
class MachineLimits:
    """The limits a benchmark run measures once, beside its rows.

    Bandwidths are measured with as many threads as a decode step uses (`threads`, by
    default `kernels.threads()`, one per core): a step of one sequence splits over them, and
    a limit measured on fewer cores than the kernel uses is no limit.
    """

    device: torch.device
    cache_bytes: int
    dram_copy_bytes_s: float
    dram_read_bytes_s: float
    matmul_flop_s: float
    _cache_copy: dict[int, float]
    threads: int = 1
    dram_footprint_bytes: int = 0
    dram_update_bytes_s: float = 0.0

    @classmethod
    def measure(
        cls, device: torch.device, *, dram_footprint_bytes: int = 0, threads: int | None = None
    ) -> MachineLimits:
        cache = last_level_cache_bytes() if device.type == "cpu" else _gpu_cache_bytes(device)
        footprint = max(dram_footprint_bytes, 8 * cache)
        threads = (kernels.threads() if threads is None else threads) if device.type == "cpu" else 1
        copy, read, update = _dram_figures(device, footprint, threads)
        return cls(
            device=device,
            cache_bytes=cache,
            dram_copy_bytes_s=copy,
            dram_read_bytes_s=read,
            matmul_flop_s=matmul_peak(device),
            _cache_copy={},
            threads=threads,
            dram_footprint_bytes=footprint,
            dram_update_bytes_s=update,
        )

    def dram_now(self) -> float:
        """The DRAM limit (the best of copy, read and update) measured again, now, as
        `measure` does: on a shared machine the bandwidth left to this process drifts by tens
        of percent within minutes, so a row is held against limits measured beside it."""
        return max(_dram_figures(self.device, self.dram_footprint_bytes, self.threads))

    @property
    def dram_bytes_s(self) -> float:
        """The best of the three DRAM figures: a kernel may beat a copy by reading more, or by
        updating in place (no write-allocate)."""
        return max(self.dram_copy_bytes_s, self.dram_read_bytes_s, self.dram_update_bytes_s)

    def bandwidth_for(self, traffic: StepTraffic) -> float:
        """The bandwidth a row of this traffic is held against (bytes/s)."""
        if traffic.residency == "dram":
            return self.dram_bytes_s
        # A copy of the row's own footprint, rounded to a power of two so rows share it.
        size = 1 << max(16, int(traffic.working_set_bytes).bit_length())
        size = min(size, self.cache_bytes)
        if size not in self._cache_copy:
            self._cache_copy[size] = copy_bandwidth(
                self.device, footprint_bytes=size, threads=self.threads
            )
        return self._cache_copy[size]


def _dram_figures(device: torch.device, footprint: int, threads: int) -> tuple[float, ...]:
    """Copy, read and in-place update bandwidth of a `footprint`-byte buffer (bytes/s)."""
    return tuple(
        measure(device, footprint_bytes=footprint, repeats=5, threads=threads)
        for measure in (copy_bandwidth, read_bandwidth, update_bandwidth)
    )


def _gpu_cache_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)) or (
            DEFAULT_LLC_BYTES
        )
    return DEFAULT_LLC_BYTES
