"""Sampling: parameters, logits processing, token choice and stop strings.

Each sequence has its own parameters and its own `torch.Generator`, and sampling a batch
treats every row as if it were alone, so a seeded request draws the same tokens whether it
runs alone or in a batch of any size. The work itself is batched (`sample_rows`).

Order of processing for one step, as in vLLM::

    raw logits (V,) ─ penalties ─ logit_bias ─ mask ─ greedy? argmax
                                                    └ / temperature ─ top_k ─ top_p ─ min_p ─ CDF

The mask (vLLM's logits processors) keeps only `allowed_token_ids` and bans the tokens the
sequence may not choose now: stop tokens before `min_tokens`, the last byte of a bad word.

The draw is one uniform number from the sequence's generator, mapped through the cumulative
distribution: one random number per token, in a row's own stream. Penalties, bias and masks
are PyTorch operators on the rows that have them; everything after them, for the whole batch,
is one Numba call that runs without the GIL (`numba_kernels.sample_rows`, float64
probabilities): a serving lane samples while the other lane and the event loop run Python.

Reported logprobs follow vLLM's default ("raw logprobs"): they are ``log_softmax`` of the raw
model logits, before penalties, temperature and filtering, so they describe the model, not
the sampler, and do not change with the sampling settings.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Final

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from . import kernels

# Below this, dividing by the temperature can overflow float32; vLLM uses the same cut-off.
GREEDY_TEMPERATURE: Final = 1e-5
MAX_STOP_STRINGS: Final = 16
MAX_LOGPROBS: Final = 20
MAX_LOGIT_BIAS: Final = 100.0  # OpenAI's bound


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
    logit_bias: dict[int, float] = Field(
        default_factory=dict,
        description="Token id -> bias in [-100, 100], added to the logits before sampling.",
    )
    # vLLM's extensions. Banned tokens are masked after penalties and bias, before the choice.
    min_tokens: int = Field(
        default=0, ge=0, description="No stop string or stop token ends a sequence before this."
    )
    stop_token_ids: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list, description="Tokens that end the sequence (finish_reason stop)."
    )
    include_stop_str_in_output: bool = False
    allowed_token_ids: list[Annotated[int, Field(ge=0)]] | None = Field(
        default=None, min_length=1, description="Only these tokens may be sampled."
    )
    bad_words: list[Annotated[bytes, Field(min_length=1)]] = Field(
        default_factory=list,
        description="Token sequences never generated: the last token of one is banned "
        "whenever the output ends with the rest of it.",
    )

    @field_validator("logit_bias")
    @classmethod
    def _bias_in_range(cls, value: dict[int, float]) -> dict[int, float]:
        for token, bias in value.items():
            if token < 0:
                raise ValueError(f"logit_bias token ids must not be negative, got {token}")
            if not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
                raise ValueError(
                    f"logit_bias values must be in [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}], "
                    f"got {bias} for token {token}"
                )
        return value

    @field_validator("stop", mode="before")
    @classmethod
    def _single_stop_string(cls, value: Any) -> Any:
        # The OpenAI API accepts `stop` as one string or a list of them.
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _min_within_max(self) -> SamplingParams:
        if self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})"
            )
        return self

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


def apply_logit_bias_(logits: torch.Tensor, bias: dict[int, float]) -> torch.Tensor:
    """Add each token's bias to `logits` (V,) in place (OpenAI's logit_bias).

    Ids beyond the vocabulary raise ValueError; requests are checked before they get here.
    """
    tokens = list(bias)
    if max(tokens) >= logits.size(-1):
        raise ValueError(f"logit_bias token id {max(tokens)} is not in the vocabulary")
    index = torch.tensor(tokens, dtype=torch.long, device=logits.device)
    values = torch.tensor([bias[t] for t in tokens], dtype=logits.dtype, device=logits.device)
    return logits.index_add_(0, index, values)


def _mask_(logits: torch.Tensor, allowed: Sequence[int] | None, banned: Sequence[int]) -> None:
    """Set the logits (V,) of tokens that may not be chosen to -inf, in place.

    Ids beyond the vocabulary are ignored. If nothing would be left (every allowed token
    banned) the bans give way, so the row still has a token to choose.
    """
    vocab = logits.size(-1)
    keep = torch.ones(vocab, dtype=torch.bool)
    if allowed is not None:
        keep[:] = False
        keep[[t for t in allowed if t < vocab]] = True
    if banned:
        without = keep.clone()
        without[[t for t in banned if t < vocab]] = False
        if bool(without.any()):
            keep = without
    if bool(keep.any()):
        logits.masked_fill_(~keep.to(logits.device), -torch.inf)


class UniformDraws:
    """One sequence's uniform draws in [0, 1) from its (CPU) generator, `BLOCK` at a time.

    A CPU generator fills a block element by element, so the draws are the numbers, in the
    order, that one ``torch.rand(1)`` per token would give: a seed samples the same text as
    it would one draw at a time, at one operator per block rather than per token (operators
    let go of the GIL, and every one is a chance for a busy event loop to keep it).
    """

    BLOCK: Final = 64

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator
        self._block = np.empty(0, np.float32)
        self._next = 0

    def __call__(self) -> float:
        if self._next == self._block.shape[0]:
            self._block = torch.rand(self.BLOCK, generator=self.generator).numpy()
            self._next = 0
        value = float(self._block[self._next])
        self._next += 1
        return value


def _uniform(source: torch.Generator | UniformDraws) -> float:
    if isinstance(source, UniformDraws):
        return source()
    return float(torch.rand(1, generator=source, device=source.device))


def sample_rows(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | UniformDraws],
    *,
    prompt_counts: Sequence[torch.Tensor | None] | None = None,
    output_counts: Sequence[torch.Tensor | None] | None = None,
    banned: Sequence[Sequence[int]] | None = None,
) -> list[tuple[int, float]]:
    """Choose the next token of each row of raw logits (B, V), each with its own params.

    `banned` lists, per row, tokens that must not be chosen now (stop tokens before
    min_tokens, the ends of bad words); with `allowed_token_ids` they are masked last.
    A row draws from its generator, or from a sequence's `UniformDraws` of one.

    Returns ``(token, logprob)`` per row, the logprob from the raw logits (see the module
    docstring). Greedy picks the argmax, the lowest index on ties. Otherwise exactly one
    uniform draw from the row's generator. A row takes the same path and the same arithmetic
    whatever else is in the batch, so equal generator state and logits give equal tokens alone
    or batched. Penalties, bias and masks are PyTorch operators on the rows that have them;
    tempering, filtering, the draw and the logprobs of the whole batch are one Numba call
    (`numba_kernels.sample_rows`, without the GIL), in float64 probabilities.
    """
    batch = logits.shape[0]
    if not len(params) == len(generators) == batch:
        raise ValueError(f"need {batch} params and generators, got {len(params)}/{len(generators)}")
    raw = logits.detach().to(device="cpu", dtype=torch.float32).contiguous()  # (B, V)
    processed = raw
    for i, p in enumerate(params):
        prompt = prompt_counts[i] if prompt_counts else None
        output = output_counts[i] if output_counts else None
        penalised = output is not None or prompt is not None
        if penalised or p.logit_bias:
            if processed is raw:
                processed = raw.clone()
            if penalised:
                processed[i] = apply_penalties(raw[i], p, prompt, output)
            if p.logit_bias:
                apply_logit_bias_(processed[i], p.logit_bias)
        row_banned = banned[i] if banned else ()
        if row_banned or p.allowed_token_ids is not None:
            if processed is raw:
                processed = raw.clone()
            _mask_(processed[i], p.allowed_token_ids, row_banned)
    greedy = np.array([p.greedy for p in params], dtype=np.bool_)
    uniforms = np.array(
        [0.0 if p.greedy else _uniform(g) for p, g in zip(params, generators, strict=True)],
        dtype=np.float64,
    )
    tokens = np.empty(batch, np.int64)
    logprobs = np.empty(batch, np.float32)
    kernels.sampling_kernels().sample_rows(
        processed.numpy(),
        raw.numpy(),
        np.array([p.temperature for p in params], dtype=np.float32),
        np.array([p.top_k for p in params], dtype=np.int64),
        np.array([p.top_p for p in params], dtype=np.float64),
        np.array([p.min_p for p in params], dtype=np.float64),
        greedy,
        uniforms,
        tokens,
        logprobs,
    )
    return list(zip(tokens.tolist(), logprobs.tolist(), strict=True))


def sample_next(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator,
    *,
    prompt_counts: torch.Tensor | None = None,
    output_counts: torch.Tensor | None = None,
) -> tuple[int, float]:
    """`sample_rows` for one sequence's raw logits (V,): ``(token, logprob)``."""
    return sample_rows(
        logits.view(1, -1),
        [params],
        [generator],
        prompt_counts=[prompt_counts],
        output_counts=[output_counts],
    )[0]


def top_logprobs(logits: torch.Tensor, k: int) -> list[tuple[int, float]]:
    """The `k` most likely tokens under the raw logits (V,), as (token, logprob), best first.

    Ties are listed in index order. The values are the ones `sample_rows` reports for a
    sampled token (the same kernel), so a token's logprob is its entry here.
    """
    if k <= 0:
        return []
    row = logits.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
    logprobs = np.empty(row.shape[0], np.float32)
    kernels.sampling_kernels().log_softmax(row, logprobs)
    order = np.argsort(-logprobs, kind="stable")[:k]
    return [(int(t), float(logprobs[t])) for t in order]


class StopMatcher:
    """Cuts streamed text at the first stop string, never letting any part of one out.

    Text that could still turn out to be the start of a stop string is held back until the
    next push settles it; a completed stop string ends the stream, dropping it and all text
    after it. If generation ends for another reason, `flush` releases the held text.
    """

    def __init__(self, stop: Iterable[str], *, include: bool = False) -> None:
        self._stops = tuple(s for s in stop if s)  # an empty stop string would match anywhere
        self._include = include  # vLLM's include_stop_str_in_output: keep the stop string
        self._held = ""
        self.matched: str | None = None

    @property
    def stopped(self) -> bool:
        return self.matched is not None

    def push(self, text: str, *, armed: bool = True) -> tuple[str, bool]:
        """Add decoded text; return (text safe to emit now, whether a stop string completed).

        Unarmed (before min_tokens) nothing can stop the stream: all text is released.
        """
        if self.stopped:
            return "", True
        buffer = self._held + text
        if not armed or not self._stops:  # nothing can match: all text is released
            self._held = ""
            return buffer, False
        cut = self._first_match(buffer)
        if cut is not None:
            self._held = ""
            if self._include and self.matched is not None:
                cut += len(self.matched)
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
