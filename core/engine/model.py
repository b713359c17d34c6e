"""The BDH model: the official parallel computation plus an exact recurrent form.

The parallel form (`BDH.forward`) computes what pathwaycom/bdh computes, parameter for
parameter. The recurrent form keeps, per layer and head, the linear-attention state
S = sum_{s<t} q_s^T x_s (N x D, float32), so that a new token costs the same whatever the
context: `prefill` consumes a prompt in chunks, `decode_step` advances a batch of sequences,
each at its own position, by one token.

Time to first token: a prompt's last chunk (`prefill_last`) computes the last position's
logits without writing the state, and finishes only that position in the last layer; its
state write (`StateWrite`) runs afterwards, once the first token is out, with the very
products `prefill_chunk` would have run, so the state is bit-identical either way.

State layout: one float32 tensor (n_layer, B, nh, N, D). Slicing a pool of such tensors along
B gives views that `prefill` and `decode_step` update in place.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .state_write import StateWrite, write_chunk

LN_EPS = 1e-5
ROPE_THETA = 2.0**16


@dataclasses.dataclass
class BDHConfig:
    n_layer: int = 6
    n_embd: int = 256
    dropout: float = 0.1
    n_head: int = 4
    mlp_internal_dim_multiplier: int = 128
    vocab_size: int = 256

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_embd", "n_head", "mlp_internal_dim_multiplier", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"BDHConfig.{name} must be a positive integer, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"BDHConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if (self.mlp_internal_dim_multiplier * self.n_embd) % self.n_head:
            raise ValueError("mlp_internal_dim_multiplier * n_embd must be divisible by n_head")
        if self.neurons_per_head % 2:
            raise ValueError("neurons per head (N) must be even for RoPE pairs")

    @property
    def neurons_per_head(self) -> int:
        """N: neurons per head."""
        return self.mlp_internal_dim_multiplier * self.n_embd // self.n_head

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BDHConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})

    def parameter_count(self) -> int:
        nh, D, N, V = self.n_head, self.n_embd, self.neurons_per_head, self.vocab_size
        return V * D + 3 * nh * D * N + D * V

    def state_numel(self) -> int:
        """Floats of recurrent state per sequence."""
        return self.n_layer * self.n_head * self.neurons_per_head * self.n_embd


def rope_frequencies(n: int) -> torch.Tensor:
    """f_j = 1 / theta^(2*floor(j/2)/n) / (2*pi), in float32, as the official code builds them."""
    j = torch.arange(0, n, 1, dtype=torch.float32)
    quantized = (j / 2).floor() * 2
    return 1.0 / (ROPE_THETA ** (quantized / n)) / (2 * math.pi)


def rope_cos_sin(phases: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the RoPE angles 2*pi*frac(phases)."""
    angles = (phases % 1) * (2 * math.pi)
    return torch.cos(angles), torch.sin(angles)


def rope(phases: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Rotate neuron pairs of v by 2*pi*frac(phases); v_rot interleaves (-v[2i+1], v[2i])."""
    return rotate(v, *rope_cos_sin(phases))


def rotate(v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`rope` with its angles' cos and sin already made (the same for every layer); in one
    Numba pass, bit-identically, where `kernels.rotate_applies` (inference on the CPU)."""
    if kernels.rotate_applies(v, cos, sin):
        return kernels.rotate(v, cos, sin)
    v_rot = torch.stack((-v[..., 1::2], v[..., ::2]), dim=-1).view(*v.size())
    return (v * cos).to(v.dtype) + (v_rot * sin).to(v.dtype)


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.size(-1),), eps=LN_EPS)


class BDH(nn.Module):
    """Baby Dragon Hatchling. Parameter names are the official checkpoint keys."""

    def __init__(self, config: BDHConfig) -> None:
        super().__init__()
        self.config = config
        nh, D, N, V = config.n_head, config.n_embd, config.neurons_per_head, config.vocab_size
        self.decoder = nn.Parameter(torch.zeros((nh * N, D)).normal_(std=0.02))
        self.encoder = nn.Parameter(torch.zeros((nh, D, N)).normal_(std=0.02))
        self.embed = nn.Embedding(V, D)
        nn.init.normal_(self.embed.weight, mean=0.0, std=0.02)
        self.encoder_v = nn.Parameter(torch.zeros((nh, D, N)).normal_(std=0.02))
        self.lm_head = nn.Parameter(torch.zeros((D, V)).normal_(std=0.02))
        self.drop = nn.Dropout(config.dropout)
        # Recomputed from the config, never stored in checkpoints.
        self.freqs: torch.Tensor
        self.register_buffer("freqs", rope_frequencies(N), persistent=False)
        self._layout: tuple[Any, torch.Tensor] | None = None  # see _decode_encoder

    # ----------------------------------------------------------------------------------------
    # Parallel form (training, reference, recompute baseline)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        observe: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, V) and the loss against `targets` if given.

        `observe(xs, ys)`, if given, sees each layer's sparse activations (B, nh, T, N) as
        they are made: the benchmarks count from them what the kernels skip.
        """
        B, T = idx.size()
        C = self.config
        D, nh, N = C.n_embd, C.n_head, C.neurons_per_head
        positions = torch.arange(0, T, device=idx.device, dtype=torch.float32)
        phases = positions.view(1, 1, T, 1) * self.freqs.view(1, 1, 1, N)  # (1, 1, T, N)

        x = layer_norm(self.embed(idx).unsqueeze(1))  # (B, 1, T, D)
        for _ in range(C.n_layer):
            xs = F.relu(x @ self.encoder)  # (B, nh, T, N)
            q = rope(phases, xs)  # (B, nh, T, N)
            scores = (q @ q.mT).tril(diagonal=-1)  # (B, nh, T, T)
            a = scores @ x  # (B, nh, T, D)
            ys = F.relu(layer_norm(a) @ self.encoder_v)  # (B, nh, T, N)
            if observe is not None:
                observe(xs, ys)
            xy = self.drop(xs * ys)  # (B, nh, T, N)
            m = xy.transpose(1, 2).reshape(B, 1, T, nh * N) @ self.decoder  # (B, 1, T, D)
            x = layer_norm(x + layer_norm(m))  # (B, 1, T, D)
        logits = x.view(B, T, D) @ self.lm_head  # (B, T, V)

        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    # ----------------------------------------------------------------------------------------
    # Recurrent form (inference)

    def new_state(
        self, batch_size: int, device: torch.device | str | None = None, *, zeroed: bool = True
    ) -> torch.Tensor:
        """The state of `batch_size` empty sequences (zeros).

        With `zeroed=False` the contents are left undefined: enough for a state whose first
        use is `prefill_chunk` at position 0, which overwrites all of it.
        """
        C = self.config
        shape = (C.n_layer, batch_size, C.n_head, C.neurons_per_head, C.n_embd)
        device = device or self.lm_head.device
        make = torch.zeros if zeroed else torch.empty
        return make(shape, dtype=torch.float32, device=device)

    @torch.no_grad()
    def prefill(
        self,
        idx: torch.Tensor,
        state: torch.Tensor | None = None,
        start_pos: int = 0,
        chunk_size: int = 256,
        all_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Consume `idx` (B, T) at positions start_pos.. in chunks; return (logits, state).

        `state` (n_layer, B, nh, N, D) is updated in place (a new one is made when None).
        Logits are (B, T, V) with `all_logits`, else the last position's (B, V): then only
        the last chunk computes logits, through `prefill_last`, whose state write follows.
        """
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        B, T = idx.size()
        if state is None:  # a first chunk at position 0 writes all of it
            state = self.new_state(B, idx.device, zeroed=start_pos != 0 or T == 0)
        if all_logits or T == 0:
            outputs = [
                self.prefill_chunk(idx[:, begin : begin + chunk_size], state, start_pos + begin)
                for begin in range(0, T, chunk_size)
            ]
            logits = torch.cat(outputs, dim=1)
            return (logits if all_logits else logits[:, -1]), state
        logits, write = self.prefill_deferred(idx, state, start_pos, chunk_size)
        write.apply(state)
        return logits, state

    @torch.no_grad()
    def prefill_deferred(
        self,
        idx: torch.Tensor,
        state: torch.Tensor,
        start_pos: int = 0,
        chunk_size: int = 256,
        *,
        scratch: torch.Tensor | None = None,
        between: Callable[[], None] | None = None,
    ) -> tuple[torch.Tensor, StateWrite]:
        """`prefill` up to the first token: every chunk of `idx` (B, T), T >= 1, but the last
        written into `state` at once, then the last one's logits (B, V) and its deferred
        `StateWrite` (`prefill_last`, its queries kept in `scratch` if given), which the
        caller applies to `state`. `between()`, if given, runs before each chunk (a check
        that may stop the prefill by raising)."""
        last = (idx.size(1) - 1) // chunk_size * chunk_size  # where the last chunk begins
        for begin in range(0, last, chunk_size):
            if between is not None:
                between()
            self.absorb_chunk(idx[:, begin : begin + chunk_size], state, start_pos + begin)
        if between is not None:
            between()
        return self.prefill_last(idx[:, last:], state, start_pos + last, scratch=scratch)

    @torch.no_grad()
    def prefill_chunk(self, idx: torch.Tensor, state: torch.Tensor, start_pos: int) -> torch.Tensor:
        """One chunk (B, C) at positions start_pos..start_pos+C-1; returns logits (B, C, V).

        `state` holds positions before `start_pos` and is updated in place. At position 0 it
        holds nothing, so it is written, not read: its old contents do not matter.
        """
        logits = self._chunk(idx, state, start_pos, rows="all")
        assert logits is not None
        return logits

    @torch.no_grad()
    def absorb_chunk(self, idx: torch.Tensor, state: torch.Tensor, start_pos: int) -> None:
        """`prefill_chunk` for a chunk whose logits nobody reads (not a prompt's last): the
        same state update, bit for bit, without the LM head."""
        self._chunk(idx, state, start_pos, rows="none")

    @torch.no_grad()
    def prefill_last(
        self,
        idx: torch.Tensor,
        state: torch.Tensor | None,
        start_pos: int,
        *,
        keep_bytes: int | None = None,
        scratch: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, StateWrite]:
        """A prompt's last chunk (B, C): the last position's logits (B, V), soonest.

        Two things the first token does not need are left out. The state is read (from
        positions before `start_pos`; `state` may be None at position 0) but not written:
        the returned `StateWrite` does that later, bit-identically to `prefill_chunk`'s
        write, once the first token is out. And the last layer finishes only the last
        position (its attention row, ys, decoder product) and the LM head reads one row.
        The write holds each layer's input x (B, C, D) and, up to `keep_bytes` (default one
        state's worth for B sequences), the layers' float32 queries q (B, nh, C, N); the
        other layers recompute q from x when it writes. With `scratch` (float32), the kept
        queries are copied into it, as far as it holds them, instead (see `StateWrite`).
        """
        if keep_bytes is None:
            keep_bytes = idx.size(0) * self.config.state_numel() * 4
        angles = self._angles(start_pos, idx.size(1), idx.device)
        write = StateWrite(
            start_pos, lambda x: self._queries(x, angles)[1].float(), keep_bytes, scratch
        )
        logits = self._chunk(idx, state, start_pos, rows="last", defer=write)
        assert logits is not None
        return logits[:, -1], write

    def _angles(
        self, start_pos: int, T: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (1, 1, T, N) of the RoPE angles of positions start_pos.., made once
        for all layers (the parallel form makes them per layer: the same values)."""
        positions = torch.arange(start_pos, start_pos + T, device=device, dtype=torch.float32)
        return rope_cos_sin(positions.view(1, 1, T, 1) * self.freqs.view(1, 1, 1, -1))

    def _queries(
        self, x: torch.Tensor, angles: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """xs = relu(x @ encoder) and q = rope(xs), (B, nh, T, N) each, for a layer's x."""
        xs = F.relu(x @ self.encoder)
        return xs, rotate(xs, *angles)

    def _chunk(
        self,
        idx: torch.Tensor,
        state: torch.Tensor | None,
        start_pos: int,
        *,
        rows: str,
        defer: StateWrite | None = None,
    ) -> torch.Tensor | None:
        """The chunk's layers; logits of `rows` ("all", "last" or "none"). With `defer`,
        the state is only read, and each layer's x and q go to `defer` instead of a write.

        With "last", the last layer finishes each sequence's last position on its own, so
        that those one-row products have the same shapes in any batch: a sequence's logits
        are bit-identical alone or batched.
        """
        B, T = idx.size()
        C = self.config
        D = C.n_embd
        if start_pos and state is None:
            raise ValueError("a chunk after position 0 reads the state: pass it")
        angles = self._angles(start_pos, T, idx.device)  # (1, 1, T, N) each
        x = layer_norm(self.embed(idx).unsqueeze(1))  # (B, 1, T, D)
        for layer in range(C.n_layer):
            xs, q = self._queries(x, angles)  # (B, nh, T, N)
            q32 = q.float()
            S = state[layer] if start_pos and state is not None else None  # earlier chunks
            if rows == "last" and layer == C.n_layer - 1:  # only the last position from here
                parts = [
                    self._mix(xs[b : b + 1], q32[b : b + 1], x[b : b + 1], S, 1, row=b)
                    for b in range(B)
                ]
                mixed = torch.cat(parts)  # (B, 1, 1, D)
            else:
                mixed = self._mix(xs, q32, x, S, T)  # (B, 1, T, D)
            if defer is not None:
                defer.keep(x, q32)
            else:  # after the reads of S above
                assert state is not None
                write_chunk(state[layer], q32, x.float(), start_pos)
            x = mixed
        if rows == "none":
            return None
        if rows == "last":  # (B, 1, V), a row at a time for the same reason
            return torch.cat([x[b : b + 1].view(1, 1, D) @ self.lm_head for b in range(B)])
        return x.view(B, T, D) @ self.lm_head  # (B, T, V)

    def _mix(
        self,
        xs: torch.Tensor,
        q32: torch.Tensor,
        x: torch.Tensor,
        S: torch.Tensor | None,
        R: int,
        *,
        row: int | None = None,
    ) -> torch.Tensor:
        """A layer after its queries, for the last R of the T positions: attention within
        the chunk and from the state S of earlier chunks (if any; sequence `row` of it when
        given, else all), ys, the decoder product and the residual; returns x (B, 1, R, D)."""
        B, nh, T, N = xs.shape
        x32 = x.float()
        q_rows = q32[:, :, T - R :]  # (B, nh, R, N)
        a = (q_rows @ q32.mT).tril(diagonal=T - R - 1) @ x32  # (B, nh, R, D)
        if S is not None:
            a = a + q_rows @ (S if row is None else S[row : row + 1])  # (B, nh, R, D)
        ys = F.relu(layer_norm(a.to(x.dtype)) @ self.encoder_v)  # (B, nh, R, N)
        xy = (xs[:, :, T - R :] * ys).transpose(1, 2).reshape(B, 1, R, nh * N)
        return layer_norm(x[:, :, T - R :] + layer_norm(xy @ self.decoder))  # (B, 1, R, D)

    @torch.no_grad()
    def decode_step(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        state: torch.Tensor,
        *,
        threads: int | None = None,
    ) -> torch.Tensor:
        """Advance B sequences by one token each; `positions` (B,) may all differ.

        Reads and updates `state` (n_layer, B, nh, N, D) in place; returns logits (B, V).
        On the CPU in float32 the whole step is one call of the fused kernel
        (`kernels.decode_rows`): no per-operator dispatch and no GIL while it runs, and
        every row computed on its own in a fixed order, so a sequence's logits and state are
        bit-identical alone or in any batch. A step of a model with a large state (below 16
        sequences) splits each layer's heads over up to `threads` threads (default
        `kernels.threads()`, one per core; `kernels.head_parts`); otherwise a batch of 8 or
        more sequences splits by sequence, one kernel call per thread. `threads=1` never
        splits (a scheduler lane that decodes beside others, see `core.engine.lane`).
        Elsewhere (GPU, bfloat16) it runs PyTorch operators: every product is a flat or
        per-head batched matmul, so no weight is ever broadcast (copied) per sequence, and BLAS
        may round differently in the last bit as the batch size changes.
        """
        fused = kernels.fused_applies(state, self.lm_head)
        threads = kernels.threads() if threads is None else threads
        heads = kernels.head_parts(tokens.size(0), state, threads) if fused else 1
        if heads == 1 and fused and len(kernels.split_bounds(tokens.size(0), threads)) > 2:
            parts = kernels.run_split(
                lambda b, e: self._decode_rows(tokens[b:e], positions[b:e], state[:, b:e], True),
                tokens.size(0),
                threads,
            )
            return torch.cat(parts)
        return self._decode_rows(tokens, positions, state, fused, heads)

    @torch.no_grad()
    def _decode_rows(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        state: torch.Tensor,
        fused: bool,
        head_parts: int = 1,
    ) -> torch.Tensor:
        """`decode_step` for one part of a batch (all of it unless it is split over threads);
        a fused step of few sequences may split each layer's heads over `head_parts` threads."""
        B = tokens.size(0)
        C = self.config
        nh, N = C.n_head, C.neurons_per_head
        if fused:  # the whole step in one kernel call; RoPE angles once, not per layer
            cos, sin = kernels.rope_cos_sin(positions, self.freqs)  # (B, N)
            weights = (self.embed.weight, self.encoder, self.encoder_v, self.decoder, self.lm_head)
            detached = tuple(w.detach().contiguous() for w in weights)  # no copy when they are
            if head_parts > 1:
                return kernels.decode_rows_by_heads(tokens, cos, sin, state, detached, head_parts)
            return kernels.decode_rows(tokens, cos, sin, state, detached)
        phases = positions.to(torch.float32).view(B, 1, 1) * self.freqs.view(1, 1, N)  # (B, 1, N)
        encoder = self._decode_encoder()  # (D, nh*N)
        x = layer_norm(self.embed(tokens))  # (B, D)
        for layer in range(C.n_layer):
            xs = F.relu(x @ encoder).view(B, nh, N)  # (B, nh, N)
            a = self._attend_update_(state[layer], rope(phases, xs), x)  # (B, nh, D)
            a = layer_norm(a.to(x.dtype))  # (B, nh, D)
            ys = F.relu(torch.bmm(a.transpose(0, 1), self.encoder_v)).transpose(0, 1)  # (B, nh, N)
            m = (xs * ys).reshape(B, nh * N) @ self.decoder  # (B, D)
            x = layer_norm(x + layer_norm(m))  # (B, D)
        return x @ self.lm_head  # (B, V)

    def _decode_encoder(self) -> torch.Tensor:
        """The encoder laid out as one (D, nh*N) matrix for the PyTorch decode path (the fused
        kernel reads the (nh, D, N) parameter itself, a C-contiguous block per head).

        The same weights serve every layer, so the copy is made once and kept until the
        parameter changes (training bumps its version) or moves.
        """
        key = (self.encoder.data_ptr(), self.encoder._version)
        if self._layout is None or self._layout[0] != key:
            C = self.config
            D, nh, N = C.n_embd, C.n_head, C.neurons_per_head
            encoder = self.encoder.detach().permute(1, 0, 2).reshape(D, nh * N)  # (D, nh*N)
            self._layout = (key, encoder)
        return self._layout[1]

    @staticmethod
    def _attend_update_(state: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """PyTorch path of one layer: a = q @ S, then S += q^T x; state (B, nh, N, D) in place."""
        B, nh, N, D = state.shape
        S = state.view(B * nh, N, D)  # float32
        q32 = q.float().reshape(B * nh, 1, N)  # (B*nh, 1, N)
        x32 = x.float().view(B, 1, 1, D).expand(B, nh, 1, D).reshape(B * nh, 1, D)
        a = torch.bmm(q32, S)  # (B*nh, 1, D): reads the state before this token is added
        S.baddbmm_(q32.mT, x32)  # S += q^T x in place, one rank-1 update per (seq, head)
        return a.view(B, nh, D)
