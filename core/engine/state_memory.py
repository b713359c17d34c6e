"""How many sequences a scheduler may hold: its slots from `generation.max_state_memory`.

    plan = plan_slots(state_bytes=state_bytes(lm.config), max_state_memory=2**30,
                      max_batch=32, lanes=2, model="bdh-small")
    plan.sequences, plan.lanes   # choices admitted at once; decode lanes, each with that many slots

A sequence's recurrent state is n_layer * nh * N * D float32s (201 MB for bdh-official), so
the slot pool, not the weights, is what runs out of memory under load. The budget pays for,
on each lane,

- its decode slots, allocated in one piece at the lane's first sequence (growing a pool would
  briefly hold the old and the new tensor, half as much again), and as many as the whole
  scheduler admits, since the lanes share one batch limit and any lane may take a request of
  `max_batch` choices; on the CPU a slot's pages are committed only once a sequence uses it;
- one prefill state: a lane reads at most one prompt across steps (the others of a step
  finish and are seated before the next starts), into a state of its own until it is seated.
  The lane keeps it as a buffer from prompt to prompt (paged in once). A prompt's last
  chunk defers its state write past the first token (`BDH.prefill_last`) and keeps that
  write's queries (at most one state's worth) in the buffer: a longer prompt's state has
  moved by then into the slot its sequence takes, and the write goes straight there.

So `sequences = min(max_batch, budget // state_bytes // lanes - 1)`. Lanes are a CPU
throughput device (`core.engine.lane`); where they would cost sequences, the scheduler runs
one lane instead. A request whose choices do not fit in the free slots waits in the queue (a
full queue: 503 with Retry-After). A budget that cannot hold one slot and one prefill state
is refused: `StateMemoryTooSmall` (503, code `state_memory_too_small`) for every request for
the model, and a logged error when the model is preloaded (/ready stays 503).

The default budget is `DEFAULT_FRACTION` of the memory available when the engine is built:
psutil's available memory on the CPU, the device's free memory on CUDA. It is per model, like
the scheduler: serving several large models needs an explicit budget.
"""

from __future__ import annotations

import dataclasses

import psutil
import torch

from core.errors import ConfigError

from .model import BDHConfig

DEFAULT_FRACTION = 0.5
STATE_DTYPE_BYTES = 4  # states are float32 whatever the weights' dtype


class StateMemoryTooSmall(ConfigError):
    """`generation.max_state_memory` cannot hold one sequence of the model (and its prefill)."""

    status_code = 503
    default_code = "state_memory_too_small"


@dataclasses.dataclass(frozen=True)
class SlotPlan:
    state_bytes: int  # one sequence's recurrent state
    max_state_memory: int  # the budget it was planned from
    sequences: int  # choices admitted at once: each lane's decode slots
    lanes: int


def state_bytes(config: BDHConfig) -> int:
    """Bytes of one sequence's recurrent state."""
    return config.state_numel() * STATE_DTYPE_BYTES


def default_state_memory(device: torch.device | str) -> int:
    """`DEFAULT_FRACTION` of the memory available now on `device` (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
    else:
        free = psutil.virtual_memory().available
    return int(free * DEFAULT_FRACTION)


def plan_slots(
    *, state_bytes: int, max_state_memory: int, max_batch: int, lanes: int, model: str
) -> SlotPlan:
    """The sequences and lanes the budget affords (see the module docstring).

    Raises StateMemoryTooSmall when not even one slot and its prefill state fit."""
    states = max_state_memory // state_bytes

    def per_lane(count: int) -> int:
        return min(max_batch, states // count - 1)

    lanes = max(1, min(lanes, max_batch))
    if lanes > 1 and per_lane(lanes) < per_lane(1):
        lanes = 1
    sequences = per_lane(lanes)
    if sequences < 1:
        raise StateMemoryTooSmall(
            f"generation.max_state_memory ({max_state_memory} bytes) cannot serve {model!r}: "
            f"one sequence's state is {state_bytes} bytes, and a scheduler needs room for one "
            f"decode slot and one prefill state ({2 * state_bytes} bytes)",
            param="generation.max_state_memory",
        )
    return SlotPlan(
        state_bytes=state_bytes,
        max_state_memory=max_state_memory,
        sequences=sequences,
        lanes=lanes,
    )
