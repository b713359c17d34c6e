"""Comparing logits: tolerances per dtype, and telling a real divergence from a near-tie.

Tolerances are norm-wise, ``max|a - b| <= atol + rtol * max|ref|``, rather than elementwise:
rounding error in these sums grows with the size of the logits, so a bound relative to the
largest logit holds as well for the 25M official model as for bdh-nano, while ``atol`` keeps
tiny logits (an untrained model) from demanding impossible precision.

Measured on random-weight bdh-nano and bdh-tiny (CPU, lengths up to 160), the recurrent and
parallel forms differ by ~1e-6 of the largest logit in float32 and ~1e-2 in bfloat16; the
bounds below leave a margin of 10-100x over that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from core.engine import LanguageModel


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float

    def bound(self, reference: torch.Tensor) -> float:
        return self.atol + self.rtol * float(reference.abs().max())


TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float32: Tolerance(atol=1e-4, rtol=1e-4),
    torch.float16: Tolerance(atol=1e-3, rtol=1e-2),
    torch.bfloat16: Tolerance(atol=1e-2, rtol=5e-2),
}

# float32 vs bfloat16 weights: the largest logit difference, relative to the largest float32
# logit. Measured ~1e-2 on random-weight models; 5e-2 flags a model whose computation is not
# numerically robust in bfloat16.
BFLOAT16_DRIFT_BOUND = 5e-2


def tolerance_for(
    dtype: torch.dtype, atol: float | None = None, rtol: float | None = None
) -> Tolerance:
    base = TOLERANCES.get(dtype, TOLERANCES[torch.float32])
    return Tolerance(
        atol if atol is not None else base.atol, rtol if rtol is not None else base.rtol
    )


def compare(got: torch.Tensor, reference: torch.Tensor, tolerance: Tolerance) -> dict[str, Any]:
    """Compare two logit tensors of the same shape; ``ok`` is False for any NaN or inf."""
    got, reference = got.float(), reference.float()
    finite = bool(torch.isfinite(got).all() and torch.isfinite(reference).all())
    difference = (got - reference).abs()
    max_diff = float(difference.max()) if difference.numel() else 0.0
    bound = tolerance.bound(reference) if reference.numel() else tolerance.atol
    return {
        "ok": finite and max_diff <= bound,
        "finite": finite,
        "max_abs_diff": max_diff,
        "bound": bound,
        "max_abs_logit": float(reference.abs().max()) if reference.numel() else 0.0,
    }


@torch.no_grad()
def divergence_is_tie(
    lm: LanguageModel,
    prompt_ids: list[int],
    got: list[int],
    expected: list[int],
    tolerance: Tolerance,
) -> dict[str, Any]:
    """Where two greedy token sequences first differ, whether the model's logits for the two
    tokens there are equal within ``tolerance`` — a tie that rounding may break either way."""
    position = next(
        (i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
        min(len(got), len(expected)),
    )
    if position >= min(len(got), len(expected)):
        return {"tie": False, "position": position, "reason": "lengths differ"}
    ids = torch.tensor([prompt_ids + expected[:position]], device=lm.device)
    logits, _ = lm.model(ids)
    last = logits[0, -1].float()  # (V,)
    gap = float((last[expected[position]] - last[got[position]]).abs())
    bound = tolerance.bound(last)
    return {"tie": gap <= bound, "position": position, "logit_gap": gap, "bound": bound}
