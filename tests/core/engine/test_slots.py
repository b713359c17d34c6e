"""The slot pool: a state written straight into a slot, and a slot reserved first."""

from __future__ import annotations

import torch

from core.engine import SlotPool


def _new_state(slots: int, zeroed: bool = True) -> torch.Tensor:
    make = torch.zeros if zeroed else torch.empty
    return make((2, slots, 1, 3, 4))


def test_seat_filled_writes_the_first_slot_and_the_others_copy_it() -> None:
    pool: SlotPool[str] = SlotPool(_new_state, max_slots=8, initial_slots=2)
    pool.seat("a", torch.ones(2, 1, 1, 3, 4))
    seen: list[torch.Tensor] = []

    def fill(view: torch.Tensor) -> None:
        seen.append(view)
        view.fill_(7.0)

    pool.seat_filled(["b", "c", "d"], fill)  # grows the pool past its two first slots
    assert pool.items == ["a", "b", "c", "d"] and pool.capacity == 4
    assert len(seen) == 1 and seen[0].shape == (2, 1, 1, 3, 4)
    states = pool.states()
    assert torch.equal(states[:, 0], torch.ones(2, 1, 3, 4))
    assert bool((states[:, 1:] == 7.0).all())
    pool.seat_filled([], fill)  # nothing to seat: nothing written
    assert len(seen) == 1


def test_a_reserved_slot_is_the_one_the_next_seat_takes() -> None:
    pool: SlotPool[str] = SlotPool(_new_state, max_slots=4, initial_slots=1)
    pool.seat("a", torch.ones(2, 1, 1, 3, 4))
    reserved = pool.reserve()  # the pool is full: it grows now
    assert pool.capacity == 2 and len(pool) == 1
    reserved.fill_(5.0)
    written: list[int] = []
    pool.seat_filled(["b"], lambda view: written.append(view.data_ptr()))
    assert written == [reserved.data_ptr()]
    assert torch.equal(pool.states()[:, 1], torch.full((2, 1, 3, 4), 5.0))
