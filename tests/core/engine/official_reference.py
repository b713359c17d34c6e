"""An independent re-statement of the official pathwaycom/bdh module, for equivalence tests.

It mirrors the official module's structure (a shared `attn` submodule with a persistent
`freqs` buffer, an unused `lm_gate` parameter, an `nn.LayerNorm` without affine parameters)
and its naive generation loop, which re-runs the whole sequence for every token. Written from
the equations in DESIGN.md §5.1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ReferenceAttention(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        j = torch.arange(0, n, dtype=torch.float32)
        freqs = 1.0 / (2.0**16) ** (((j / 2).floor() * 2) / n) / (2 * math.pi)
        self.register_buffer("freqs", freqs.view(1, 1, 1, n))

    def forward(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        T = q.size(-2)
        t = torch.arange(0, T, dtype=torch.float32).view(1, 1, -1, 1)
        phase = ((t * self.freqs) % 1) * (2 * math.pi)
        rotated = torch.stack((-q[..., 1::2], q[..., ::2]), dim=-1).view(*q.size())
        qr = q * torch.cos(phase) + rotated * torch.sin(phase)
        return (qr @ qr.mT).tril(diagonal=-1) @ v


class ReferenceBDH(nn.Module):
    def __init__(self, n_layer: int, d: int, nh: int, multiplier: int, vocab: int = 256) -> None:
        super().__init__()
        n = multiplier * d // nh
        self.n_layer, self.nh, self.n, self.d = n_layer, nh, n, d
        self.decoder = nn.Parameter(torch.zeros(nh * n, d))
        self.encoder = nn.Parameter(torch.zeros(nh, d, n))
        self.attn = ReferenceAttention(n)
        self.ln = nn.LayerNorm(d, elementwise_affine=False, bias=False)
        self.embed = nn.Embedding(vocab, d)
        self.encoder_v = nn.Parameter(torch.zeros(nh, d, n))
        self.lm_head = nn.Parameter(torch.zeros(d, vocab))
        self.lm_gate = nn.Parameter(torch.zeros(d, 1))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        x = self.ln(self.embed(idx).unsqueeze(1))
        for _ in range(self.n_layer):
            xs = F.relu(x @ self.encoder)
            a = self.ln(self.attn(xs, x))
            ys = F.relu(a @ self.encoder_v)
            m = (xs * ys).transpose(1, 2).reshape(B, 1, T, self.nh * self.n) @ self.decoder
            x = self.ln(x + self.ln(m))
        return x.view(B, T, self.d) @ self.lm_head

    @torch.no_grad()
    def greedy(self, idx: torch.Tensor, new_tokens: int) -> torch.Tensor:
        for _ in range(new_tokens):
            nxt = self(idx)[:, -1].argmax(dim=-1, keepdim=True)
            idx = torch.cat((idx, nxt), dim=1)
        return idx
