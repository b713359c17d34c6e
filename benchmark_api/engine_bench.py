"""Engine measurements: prefill and decode speed of one model, recurrent vs recompute.

Each measurement builds a random context of `context` bytes per sequence, times the prefill
(time to first token), then times `new_tokens` single-token decode steps for the whole batch.
The recurrent prefill defers its last chunk's state write past the first token, as the
scheduler does (`BDH.prefill_last`): the first decode step's time, the second token's
latency, includes that write (and `state_write_s` tells it apart).
`recompute` re-runs the full forward over the growing sequence for every new token, which is
what the official `generate` does; `recurrent` advances the fixed-size state.

What a step moves and the machine limits it is held against are in `benchmark_api.roofline`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import psutil
import torch

from benchmark_api.roofline import STATE_BYTES_PER_FLOAT
from core.engine.model import BDH, BDHConfig, StateWrite

Mode = Literal["recurrent", "recompute"]
Check = Callable[[], None]


@dataclass
class DecodeMeasurement:
    mode: str
    batch_size: int
    context: int
    new_tokens: int
    prefill_s: float
    step_s: list[float]  # the first (recurrent) includes the deferred state write
    peak_memory_mb: float
    # the process's CPU time per decode step (the deferred state write not included)
    step_cpu_s: list[float] = field(default_factory=list)
    state_write_s: float = 0.0  # the last prefill chunk's state write, after the first token

    @property
    def ttft_ms(self) -> float:
        return self.prefill_s * 1000

    @property
    def tpot_ms(self) -> float:
        """Median time per output token (per decode step of the batch)."""
        return statistics.median(self.step_s) * 1000

    @property
    def second_token_ms(self) -> float:
        """The second token's latency: the deferred state write and the first decode step."""
        return self.step_s[0] * 1000

    @property
    def mean_step_s(self) -> float:
        return statistics.fmean(self.step_s)

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.batch_size * self.context / max(self.prefill_s, 1e-12)

    @property
    def decode_tokens_per_s(self) -> float:
        return self.batch_size / max(statistics.median(self.step_s), 1e-12)

    def row(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("step_s")
        data.pop("step_cpu_s")
        data.update(
            ttft_ms=self.ttft_ms,
            tpot_ms=self.tpot_ms,
            prefill_tokens_per_s=self.prefill_tokens_per_s,
            decode_tokens_per_s=self.decode_tokens_per_s,
        )
        return data


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _no_check() -> None:
    return None


class _MemoryWatch:
    """Peak memory of one measurement: CUDA's allocator peak, else the sampled process RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._process = psutil.Process()
        self.peak_bytes = 0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def sample(self) -> None:
        if self.device.type != "cuda":
            self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return self.peak_bytes / 2**20


@torch.no_grad()
def measure_decode(
    model: BDH,
    *,
    batch_size: int,
    context: int,
    new_tokens: int,
    mode: Mode = "recurrent",
    seed: int = 0,
    prefill_chunk: int = 256,
    check_cancelled: Check | None = None,
    scratch: torch.Tensor | None = None,
    slot: torch.Tensor | None = None,
) -> DecodeMeasurement:
    """Time one prefill of `context` bytes and `new_tokens` decode steps of the batch.

    `check_cancelled` is called between prefill chunks and between decode steps; it stops the
    measurement by raising. `scratch` (float32, `model.new_state(batch_size)` sized) is where
    a prompt of one chunk keeps the queries of its deferred write, as a scheduler lane keeps
    them in its prefill buffer: reused over measurements it is paged in once. `slot` (the
    same size) is the state the prompt is read into and decoded from, as a lane's slot, paged
    in likewise; without it a fresh state is made (its first touch then lands in the times).
    """
    if mode not in ("recurrent", "recompute"):
        raise ValueError(f"unknown mode {mode!r}")
    check = check_cancelled or _no_check
    device = model.lm_head.device
    generator = torch.Generator().manual_seed(seed)
    V = model.config.vocab_size
    idx = torch.randint(0, V, (batch_size, context), generator=generator).to(device)
    memory = _MemoryWatch(device)
    _sync(device)
    started = time.perf_counter()
    write: StateWrite | None = None
    if mode == "recurrent":
        logits, state, write = _prefill(model, idx, prefill_chunk, check, scratch, slot)
    else:
        check()
        logits, state = model(idx)[0][:, -1], None
    token = logits.argmax(dim=-1)  # (B,) the first token
    _sync(device)
    prefill_s = time.perf_counter() - started
    memory.sample()

    steps: list[float] = []
    step_cpu: list[float] = []
    write_s = 0.0
    for i in range(new_tokens):
        check()
        if i:
            token = logits.argmax(dim=-1)  # (B,)
        _sync(device)
        t0 = time.perf_counter()
        if write is not None:  # before the first decode step: the state it reads
            assert state is not None
            write.apply(state)
            write = None
            _sync(device)
            write_s = time.perf_counter() - t0
        cpu0 = time.process_time()  # the decode step's own CPU, without the write
        if state is not None:
            positions = torch.full((batch_size,), context + i, device=device)
            logits = model.decode_step(token, positions, state)  # (B, V)
        else:
            idx = torch.cat([idx, token[:, None]], dim=1)  # (B, T + 1)
            logits = model(idx)[0][:, -1]  # (B, V)
        _sync(device)
        steps.append(time.perf_counter() - t0)
        step_cpu.append(time.process_time() - cpu0)
        memory.sample()
    return DecodeMeasurement(
        mode=mode,
        batch_size=batch_size,
        context=context,
        new_tokens=new_tokens,
        prefill_s=prefill_s,
        step_s=steps,
        peak_memory_mb=memory.peak_mb,
        step_cpu_s=step_cpu,
        state_write_s=write_s,
    )


def _prefill(
    model: BDH,
    idx: torch.Tensor,
    chunk: int,
    check: Check,
    scratch: torch.Tensor | None,
    slot: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, StateWrite]:
    """What a scheduler lane runs up to the first token (`BDH.prefill_deferred`), with a
    cancellation check before each chunk: the last logits (B, V), the prompt's state (`slot`
    if given; the earlier chunks are in it) and the last chunk's deferred write, which keeps
    its queries (in `scratch` if given)."""
    B, T = idx.size()
    if T == 0:
        raise ValueError("a context of at least one token is required")
    state = slot if slot is not None else model.new_state(B, idx.device, zeroed=False)
    logits, write = model.prefill_deferred(idx, state, 0, chunk, scratch=scratch, between=check)
    return logits, state, write


def measure_repeats(
    model: BDH,
    *,
    batch_size: int,
    context: int,
    new_tokens: int,
    mode: Mode,
    repeats: int,
    warmup: int = 0,
    seed: int = 0,
    prefill_chunk: int = 256,
    check_cancelled: Check | None = None,
) -> list[DecodeMeasurement]:
    """`warmup` untimed measurements, then `repeats` timed ones (each with its own context),
    sharing one scratch for the queries of the deferred state write and one state, as a
    lane keeps its prefill buffer and slots."""
    results = []
    recurrent = mode == "recurrent"
    scratch = model.new_state(batch_size) if recurrent else None  # paged in
    slot = model.new_state(batch_size) if recurrent else None
    for i in range(warmup + repeats):
        measurement = measure_decode(
            model,
            batch_size=batch_size,
            context=context,
            new_tokens=new_tokens,
            mode=mode,
            seed=seed + i,
            prefill_chunk=prefill_chunk,
            check_cancelled=check_cancelled,
            scratch=scratch,
            slot=slot,
        )
        if i >= warmup:
            results.append(measurement)
    return results


# Memory ------------------------------------------------------------------------------------


def memory_needed(
    config: BDHConfig,
    *,
    batch_size: int,
    context: int,
    new_tokens: int,
    mode: Mode,
    prefill_chunk: int = 256,
) -> int:
    """Rough peak bytes of one measurement beyond the weights, float32.

    Recompute holds the (B, nh, T, T) attention scores (and their masked copy) of the full
    sequence; recurrent holds the state, the scratch of the deferred state write's queries
    (one state's worth) and one prefill chunk's scores and activations.
    """
    nh, D, N = config.n_head, config.n_embd, config.neurons_per_head
    if mode == "recompute":
        T = context + new_tokens
        return 4 * batch_size * nh * (2 * T * T + 4 * T * N + T * D)
    C = min(prefill_chunk, context)
    state = config.state_numel() * STATE_BYTES_PER_FLOAT
    return batch_size * (2 * state + 4 * nh * (2 * C * C + 4 * C * N + C * D))


def free_memory(device: torch.device) -> int:
    """Bytes the device can still give: free CUDA memory, else available system memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return int(psutil.virtual_memory().available)
