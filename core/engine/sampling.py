"""Per-request sampling: parameters, logits processing, token choice and stop strings.

Everything here works on one sequence at a time, with that sequence's own `torch.Generator`,
so a seeded request draws the same tokens whether it runs alone or in a batch of any size.

Order of processing for one step, as in vLLM::

    raw logits (V,) ─ penalties ─ greedy? argmax
                                └ / temperature ─ top_k ─ top_p ─ min_p ─ multinomial

Reported logprobs follow vLLM's default ("raw logprobs"): they are ``log_softmax`` of the raw
model logits, before penalties, temperature and filtering, so they describe the model, not
the sampler, and do not change with the sampling settings.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Final

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

# Below this, dividing by the temperature can overflow float32; vLLM uses the same cut-off.
GREEDY_TEMPERATURE: Final = 1e-5
MAX_STOP_STRINGS: Final = 16
MAX_LOGPROBS: Final = 20


class SamplingParams(BaseModel):
    """What one request asks of the sampler. Bounds follow the OpenAI API (and vLLM)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_tokens: int = Field(default=16, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_k: int = Field(default=0, ge=-1, description="0 or -1: no top-k filtering.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=2.0)
    seed: int | None = None
    stop: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, max_length=MAX_STOP_STRINGS
    )
    n: int = Field(default=1, ge=1, le=128)
    logprobs: int | None = Field(
        default=None, ge=0, le=MAX_LOGPROBS, description="Top alternatives returned per token."
    )

    @field_validator("stop", mode="before")
    @classmethod
    def _single_stop_string(cls, value: Any) -> Any:
        # The OpenAI API accepts `stop` as one string or a list of them.
        return [value] if isinstance(value, str) else value

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for one sequence: reproducible from `seed`, otherwise freshly random.

    Sampling runs on the generator's device; a CPU generator makes a seed give the same
    tokens on any hardware (given the same logits).
    """
    generator = torch.Generator(device=device)
    # torch accepts seeds in [0, 2**64); reducing modulo 2**64 lets any integer seed through.
    generator.manual_seed(secrets.randbits(64) if seed is None else seed % 2**64)
    return generator


def count_tokens(
    token_ids: Sequence[int], vocab_size: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Occurrences of each token id, as the (V,) counts `apply_penalties` takes."""
    ids = torch.tensor(token_ids, dtype=torch.long, device=device)
    return torch.bincount(ids, minlength=vocab_size)  # (V,)


def apply_penalties(
    logits: torch.Tensor,
    params: SamplingParams,
    prompt_counts: torch.Tensor | None = None,
    output_counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return float32 logits with the repetition, frequency and presence penalties applied.

    `logits` (V,) is never modified. `prompt_counts`/`output_counts` (V,) count each token in
    the prompt and in the generated text. Repetition (vLLM) divides positive and multiplies
    negative logits of every token seen in either; frequency and presence (OpenAI) subtract
    ``frequency_penalty * count + presence_penalty * (count > 0)`` over the output only.
    """
    logits = logits.float()  # (V,)
    if params.repetition_penalty != 1.0:
        seen = torch.zeros_like(logits, dtype=torch.bool)
        for counts in (prompt_counts, output_counts):
            if counts is not None:
                seen |= counts.to(logits.device) > 0
        penalised = torch.where(
            logits > 0, logits / params.repetition_penalty, logits * params.repetition_penalty
        )
        logits = torch.where(seen, penalised, logits)
    if output_counts is not None and (params.frequency_penalty or params.presence_penalty):
        counts = output_counts.to(device=logits.device, dtype=torch.float32)
        logits = (
            logits
            - params.frequency_penalty * counts
            - params.presence_penalty * (counts > 0).float()
        )
    return logits


def _sampling_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution to draw from: temperature, then filters, renormalised; (V,).

    Filters work in descending-logit order and each sees the distribution left by the one
    before it. The most likely token always survives, so the result is never empty. A
    stable sort puts equal logits in index order, which makes top_k cut ties
    deterministically. Without filters the sort is skipped: it is the costliest step.
    """
    scaled = logits / params.temperature  # (V,)
    if params.top_k <= 0 and params.top_p >= 1.0 and params.min_p <= 0.0:
        return torch.softmax(scaled, dim=-1)
    sorted_logits, order = torch.sort(scaled, descending=True, stable=True)
    if params.top_k > 0:
        sorted_logits[params.top_k :] = -torch.inf
    probs = torch.softmax(sorted_logits, dim=-1)  # (V,) in sorted order
    if params.top_p < 1.0:
        # Keep the shortest prefix whose mass reaches top_p: a token stays while the mass
        # strictly before it is still short of top_p.
        mass_before = torch.cumsum(probs, dim=-1) - probs
        probs = _renormalise(probs, keep=mass_before < params.top_p)
    if params.min_p > 0.0:
        probs = _renormalise(probs, keep=probs >= params.min_p * probs[0])
    return torch.empty_like(probs).scatter_(0, order, probs)  # back to token order


def _renormalise(probs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    keep[0] = True  # guards against rounding dropping the top token
    probs = torch.where(keep, probs, 0.0)
    return probs / probs.sum()


def sample_next(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator,
    *,
    prompt_counts: torch.Tensor | None = None,
    output_counts: torch.Tensor | None = None,
) -> tuple[int, float]:
    """Choose the next token of one sequence from its raw logits (V,).

    Returns ``(token, logprob)``, the logprob taken from the raw logits (see the module
    docstring). Greedy picks the argmax, the lowest index on ties. Otherwise one draw
    from `generator`, so equal generator state and logits give equal tokens.
    """
    logits = logits.to(device=generator.device, dtype=torch.float32)  # (V,)
    processed = apply_penalties(logits, params, prompt_counts, output_counts)
    if params.greedy:
        token = int(torch.argmax(processed))
    else:
        probs = _sampling_probs(processed, params)
        token = int(torch.multinomial(probs, 1, generator=generator))
    logprob = float(torch.log_softmax(logits, dim=-1)[token])
    return token, logprob


def sample_rows(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator],
    *,
    prompt_counts: Sequence[torch.Tensor | None] | None = None,
    output_counts: Sequence[torch.Tensor | None] | None = None,
) -> list[tuple[int, float]]:
    """`sample_next` for each row of a (B, V) batch, each with its own params and generator."""
    batch = logits.shape[0]
    if not len(params) == len(generators) == batch:
        raise ValueError(f"need {batch} params and generators, got {len(params)}/{len(generators)}")
    prompts = prompt_counts or [None] * batch
    outputs = output_counts or [None] * batch
    return [
        sample_next(row, p, g, prompt_counts=pc, output_counts=oc)
        for row, p, g, pc, oc in zip(logits, params, generators, prompts, outputs, strict=True)
    ]


def top_logprobs(logits: torch.Tensor, k: int) -> list[tuple[int, float]]:
    """The `k` most likely tokens under the raw logits (V,), as (token, logprob), best first.

    Ties are listed in index order.
    """
    if k <= 0:
        return []
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # (V,)
    values, order = torch.sort(logprobs, descending=True, stable=True)
    return [(int(t), float(v)) for t, v in zip(order[:k], values[:k], strict=True)]


class StopMatcher:
    """Cuts streamed text at the first stop string, never letting any part of one out.

    Text that could still turn out to be the start of a stop string is held back until the
    next push settles it; a completed stop string ends the stream, dropping it and all text
    after it. If generation ends for another reason, `flush` releases the held text.
    """

    def __init__(self, stop: Iterable[str]) -> None:
        self._stops = tuple(s for s in stop if s)  # an empty stop string would match anywhere
        self._held = ""
        self.matched: str | None = None

    @property
    def stopped(self) -> bool:
        return self.matched is not None

    def push(self, text: str) -> tuple[str, bool]:
        """Add decoded text; return (text safe to emit now, whether a stop string completed)."""
        if self.stopped:
            return "", True
        buffer = self._held + text
        cut = self._first_match(buffer)
        if cut is not None:
            self._held = ""
            return buffer[:cut], True
        held = self._partial_match_length(buffer)
        self._held = buffer[len(buffer) - held :]
        return buffer[: len(buffer) - held], False

    def flush(self) -> str:
        """Release the held-back text (empty once a stop string has matched)."""
        text, self._held = self._held, ""
        return text

    def _first_match(self, buffer: str) -> int | None:
        """Start of the earliest complete stop string in `buffer`, recording which one."""
        best: int | None = None
        for stop in self._stops:
            index = buffer.find(stop)
            if index != -1 and (best is None or index < best):
                best, self.matched = index, stop
        return best

    def _partial_match_length(self, buffer: str) -> int:
        """Length of the longest tail of `buffer` that begins some stop string."""
        longest = max((len(s) for s in self._stops), default=1)
        for length in range(min(len(buffer), longest - 1), 0, -1):
            tail = buffer[-length:]
            if any(stop.startswith(tail) for stop in self._stops):
                return length
        return 0
