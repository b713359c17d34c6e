"""The state write of a prefill chunk, and its deferral past the first token.

A chunk of C tokens adds q^T x to each layer's state S (N x D per head): C times the work
of one decode step's update, and for a prompt of one chunk about a third more than the
parallel forward itself on bdh-official (plus writing 201 MB). The first token does not
need it, so the last chunk of a prompt (`BDH.prefill_last`) hands it to a `StateWrite`,
which the caller applies once the token is out, before the sequence's first decode step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def write_chunk(S: torch.Tensor, q32: torch.Tensor, x32: torch.Tensor, start_pos: int) -> None:
    """One layer's state write for a chunk: S = q^T x at position 0 (no read of S at all),
    else S += q^T x; S (B, nh, N, D) float32 in place, q32 (B, nh, T, N), x32 (B, 1, T, D)."""
    B, nh, T, _ = q32.shape
    x32 = x32.expand(B, nh, T, x32.size(-1))
    if start_pos == 0:
        torch.matmul(q32.mT, x32, out=S)
    else:
        S.add_(q32.mT @ x32)


class StateWrite:
    """The state write of a prompt's last chunk, deferred past its logits (`prefill_last`).

    `apply(state)` writes S = q^T x (at position 0) or adds it, per layer, with the same
    products `prefill_chunk` runs, so the state is bit-identical to its. It holds each
    layer's input x (B, 1, C, D, small) and, within `keep_bytes`, its float32 queries q
    (B, nh, C, N: at C = D as large as one layer's state); a layer whose queries were not
    kept recomputes them from x (one encoder product more, same bits). One use only.

    Kept queries are held as made, or copied into `scratch` (a contiguous float32 tensor
    whose size then bounds them) when given: memory a caller reuses from prompt to prompt
    (a lane's prefill buffer) is already paged in, where queries made fresh for each prompt
    cost page faults that are a few percent of the time to first token.
    """

    def __init__(
        self,
        start_pos: int,
        queries: Callable[[torch.Tensor], torch.Tensor],
        keep_bytes: int,
        scratch: torch.Tensor | None = None,
    ) -> None:
        if scratch is not None and (scratch.dtype != torch.float32 or not scratch.is_contiguous()):
            raise ValueError("scratch must be a contiguous float32 tensor")
        self.start_pos = start_pos
        self._queries = queries  # a layer's x -> its float32 q, as the chunk computed it
        self._scratch = None if scratch is None else scratch.view(-1)
        self._room = keep_bytes if scratch is None else scratch.numel() * 4
        self._layers: list[tuple[torch.Tensor, torch.Tensor | None]] = []  # (x, q32 or None)

    @property
    def kept_bytes(self) -> int:
        """Bytes of queries held for the write."""
        return sum(q.numel() * q.element_size() for _, q in self._layers if q is not None)

    def keep(self, x: torch.Tensor, q32: torch.Tensor) -> None:
        size = q32.numel() * q32.element_size()
        if size > self._room:
            self._layers.append((x, None))
            return
        if self._scratch is not None:
            used = self._scratch.numel() - self._room // 4
            q32 = self._scratch[used : used + q32.numel()].view(q32.shape).copy_(q32)
        self._room -= size
        self._layers.append((x, q32))

    @torch.no_grad()
    def apply(self, state: torch.Tensor) -> None:
        """Write the chunk into `state` (n_layer, B, nh, N, D), in place."""
        if len(self._layers) != state.size(0):
            raise RuntimeError("a StateWrite applies once, after its chunk")
        for layer, (x, q32) in enumerate(self._layers):
            if q32 is None:
                q32 = self._queries(x)
            write_chunk(state[layer], q32, x.float(), self.start_pos)
        self._layers.clear()
