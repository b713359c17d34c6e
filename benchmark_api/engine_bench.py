"""Engine measurements: prefill and decode speed of one model, recurrent vs recompute.

Each measurement builds a random context of `context` bytes per sequence, times the prefill
(time to first token), then times `new_tokens` single-token decode steps for the whole batch.
`recompute` re-runs the full forward over the growing sequence for every new token, which is
what the official `generate` does; `recurrent` advances the fixed-size state.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

import psutil
import torch

from core.engine.model import BDH

Mode = Literal["recurrent", "recompute"]


@dataclass
class DecodeMeasurement:
    mode: str
    batch_size: int
    context: int
    new_tokens: int
    prefill_s: float
    step_s: list[float]
    peak_memory_mb: float

    @property
    def ttft_ms(self) -> float:
        return self.prefill_s * 1000

    @property
    def tpot_ms(self) -> float:
        """Median time per output token (per decode step of the batch)."""
        return statistics.median(self.step_s) * 1000

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.batch_size * self.context / max(self.prefill_s, 1e-12)

    @property
    def decode_tokens_per_s(self) -> float:
        return self.batch_size / max(statistics.median(self.step_s), 1e-12)

    def row(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("step_s")
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


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return psutil.Process().memory_info().rss / 2**20


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
) -> DecodeMeasurement:
    device = model.lm_head.device
    generator = torch.Generator().manual_seed(seed)
    V = model.config.vocab_size
    idx = torch.randint(0, V, (batch_size, context), generator=generator).to(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    started = time.perf_counter()
    if mode == "recurrent":
        logits, state = model.prefill(idx, chunk_size=prefill_chunk)
    elif mode == "recompute":
        logits = model(idx)[0][:, -1]
    else:
        raise ValueError(f"unknown mode {mode!r}")
    _sync(device)
    prefill_s = time.perf_counter() - started

    steps: list[float] = []
    for i in range(new_tokens):
        token = logits.argmax(dim=-1)  # (B,)
        _sync(device)
        t0 = time.perf_counter()
        if mode == "recurrent":
            positions = torch.full((batch_size,), context + i, device=device)
            logits = model.decode_step(token, positions, state)
        else:
            idx = torch.cat([idx, token[:, None]], dim=1)
            logits = model(idx)[0][:, -1]
        _sync(device)
        steps.append(time.perf_counter() - t0)
    return DecodeMeasurement(
        mode=mode,
        batch_size=batch_size,
        context=context,
        new_tokens=new_tokens,
        prefill_s=prefill_s,
        step_s=steps,
        peak_memory_mb=_memory_mb(device),
    )
