"""A lane's preallocated recurrent states: one slot per running sequence, kept compacted.

    pool = SlotPool(model.new_state, max_slots=32, initial_slots=4, name="bdh-nano")
    pool.seat(sequence, state)              # copies a prefilled (n_layer, 1, nh, N, D) state
    pool.seat_filled([a, b], write.apply)   # writes one state into a's slot, b copies it
    logits = model.decode_step(tokens, positions, pool.states())   # in place, (B, ...) view
    pool.release([row, ...])                # finished rows: the last slot moves into each hole

The sequence in row i owns slot i, so the running states are always the prefix
`tensor[:, :B]`: a decode step reads and writes them in place, with no gather or scatter, and
freeing a sequence costs one state copy, never one per token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import torch

logger = logging.getLogger(__name__)

INITIAL_SLOTS = 4
_T = TypeVar("_T")


class SlotPool(Generic[_T]):
    """Running items (one per row) and their states, grown geometrically up to `max_slots`."""

    def __init__(
        self,
        new_state: Callable[..., torch.Tensor],
        *,
        max_slots: int,
        initial_slots: int = INITIAL_SLOTS,
        name: str = "",
    ) -> None:
        if min(max_slots, initial_slots) < 1:
            raise ValueError("max_slots and initial_slots must be positive")
        self._new_state = new_state  # new_state(slots, zeroed=False) -> (n_layer, slots, ...)
        self.max_slots = max_slots
        self.initial_slots = min(initial_slots, max_slots)
        self.name = name  # for the log
        self.items: list[_T] = []  # items[i]'s state is slot i
        self._tensor: torch.Tensor | None = None  # (n_layer, slots, nh, N, D)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def capacity(self) -> int:
        """Allocated slots (0 before the first seat or after `clear`)."""
        return 0 if self._tensor is None else self._tensor.size(1)

    def states(self) -> torch.Tensor:
        """The running states, a view (n_layer, B, nh, N, D) that a decode step updates."""
        if self._tensor is None:
            raise RuntimeError("the slot pool holds no states")
        return self._tensor[:, : len(self.items)]

    def seat(self, item: _T, state: torch.Tensor) -> None:
        """Append `item` with a copy of `state` (n_layer, 1, nh, N, D) in the next slot."""
        slot = self._claim()
        assert self._tensor is not None
        self._tensor[:, slot].copy_(state[:, 0])
        self.items.append(item)

    def reserve(self) -> torch.Tensor:
        """The next free slot's state, (n_layer, 1, nh, N, D), before anything is seated in
        it: the next `seat` or `seat_filled` takes that very slot (growing the pool now if
        it is full), so a caller may start writing the state there first."""
        slot = self._claim()
        assert self._tensor is not None
        return self._tensor[:, slot : slot + 1]

    def seat_filled(self, items: Sequence[_T], fill: Callable[[torch.Tensor], None]) -> None:
        """Append `items`, which start from one state: `fill(view)` writes it straight into
        the first one's slot (a (n_layer, 1, nh, N, D) view of the pool, old contents
        undefined), and the others copy that slot. No state is made outside the pool."""
        if not items:
            return
        slot = self._claim()
        assert self._tensor is not None
        fill(self._tensor[:, slot : slot + 1])
        self.items.append(items[0])
        for item in items[1:]:
            self.seat(item, self._tensor[:, slot : slot + 1])

    def release(self, rows: Sequence[int]) -> None:
        """Free rows, moving the last running slot into each hole (highest first)."""
        for row in sorted(rows, reverse=True):
            last = len(self.items) - 1
            if row != last:
                assert self._tensor is not None
                self._tensor[:, row].copy_(self._tensor[:, last])
                self.items[row] = self.items[last]
            self.items.pop()

    def clear(self, *, free: bool = False) -> None:
        """Forget every item; `free` also drops the states' memory."""
        self.items.clear()
        if free:
            self._tensor = None

    def _claim(self) -> int:
        """The next slot, B; grows the pool (doubling) when it is full."""
        batch = len(self.items)
        if batch >= self.max_slots:
            raise RuntimeError("no free slot: admission let too many sequences in")
        if self._tensor is None or batch == self._tensor.size(1):
            capacity = self._tensor.size(1) * 2 if self._tensor is not None else self.initial_slots
            # Every slot is written (copied into) before it is read: no need to zero it.
            grown = self._new_state(min(capacity, self.max_slots), zeroed=False)
            if self._tensor is not None:
                grown[:, :batch].copy_(self._tensor[:, :batch])
            self._tensor = grown
            logger.debug("%s: state pool grown to %d slots", self.name, grown.size(1))
        return batch
