"""One generated sequence: sampling, penalties, UTF-8 safe text, stop strings, logprobs.

`SequenceDecoder` turns the model's logits for one sequence into its next token and the text
that may be shown so far. It holds no model state, so the same class serves `LanguageModel`
(a fixed batch) and the continuous-batching scheduler.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .sampling import SamplingParams, StopMatcher, UniformDraws, make_generator, sample_rows
from .sampling import top_logprobs as top_logprobs_of
from .tokenizer import IncrementalDecoder

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_ABORT = "abort"


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)
    rank: int | None = None  # 1 = most likely; filled where it was computed (prompt logprobs)


@dataclass
class CompletionOutput:
    index: int
    prompt_index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    prompt_tokens: int
    logprobs: list[TokenLogprob] | None = None

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


class SequenceDecoder:
    """Sampling and text bookkeeping for one sequence (one choice of one prompt)."""

    def __init__(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        vocab_size: int = 256,
        choice: int = 0,
        prompt_index: int = 0,
    ) -> None:
        self.prompt_ids = prompt_ids
        self.params = params
        self.choice = choice
        self.prompt_index = prompt_index
        # Choice i of a seeded request draws from seed + i: the same seed gives the same text
        # whether the request runs alone or in any batch.
        seed = None if params.seed is None else params.seed + choice
        self.draws = UniformDraws(make_generator(seed, "cpu"))
        self.penalised = (
            params.presence_penalty != 0
            or params.frequency_penalty != 0
            or params.repetition_penalty != 1.0
        )
        self.prompt_counts = torch.bincount(
            torch.tensor(prompt_ids, dtype=torch.long), minlength=vocab_size
        ).to(torch.float32)
        self.output_counts = torch.zeros(vocab_size, dtype=torch.float32)
        self.output_ids: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None
        self.logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None
        self._utf8 = IncrementalDecoder()
        self._stop = StopMatcher(list(params.stop or []), include=params.include_stop_str_in_output)
        self._stop_ids = frozenset(params.stop_token_ids)
        self._bad_words = [bytes(word) for word in params.bad_words]

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def position(self) -> int:
        """Position of the next token to feed: the last sampled token sits here."""
        return len(self.prompt_ids) + len(self.output_ids) - 1

    @property
    def last_token(self) -> int:
        return self.output_ids[-1]

    def banned_tokens(self) -> list[int]:
        """Tokens this sequence may not choose next (vLLM's min-tokens and bad-words rules)."""
        banned = list(self._stop_ids) if len(self.output_ids) < self.params.min_tokens else []
        for word in self._bad_words:
            *head, last = word
            if not head or bytes(self.output_ids[-len(head) :]) == bytes(head):
                banned.append(last)
        return banned

    def accept(self, logits: torch.Tensor) -> str:
        """Sample the next token from `logits` (V,); return the text that may now be shown."""
        return accept_rows([self], logits.view(1, -1))[0]

    def _push(self, token: int, logprob: float, logits: torch.Tensor, row: int) -> str:
        """Record the sampled token (from row `row` of the batch's logits (B, V)); return the
        text that may now be shown."""
        self.output_ids.append(token)
        if self.penalised:
            self.output_counts[token] += 1
        if self.logprobs is not None:
            k = self.params.logprobs or 0
            top = top_logprobs_of(logits[row], k) if k else []
            self.logprobs.append(TokenLogprob(token, logprob, top))

        armed = len(self.output_ids) >= self.params.min_tokens
        if armed and token in self._stop_ids:
            # As vLLM: the stop token counts as generated, its text is shown only on request.
            text = self._utf8.push(token) if self.params.include_stop_str_in_output else ""
            delta, _ = self._stop.push(text + self._utf8.flush(), armed=False)
            self.finish_reason = FINISH_STOP
            self.text += delta
            return delta
        delta, stopped = self._stop.push(self._utf8.push(token), armed=armed)
        if stopped:
            self.finish_reason = FINISH_STOP
        elif len(self.output_ids) >= self.params.max_tokens:
            self.finish_reason = FINISH_LENGTH
            tail, stopped = self._stop.push(self._utf8.flush())
            delta += tail
            if stopped:
                self.finish_reason = FINISH_STOP
            else:
                delta += self._stop.flush()
        self.text += delta
        return delta

    def abort(self) -> None:
        if not self.finished:
            self.finish_reason = FINISH_ABORT

    def output(self) -> CompletionOutput:
        return CompletionOutput(
            index=self.choice,
            prompt_index=self.prompt_index,
            text=self.text,
            token_ids=list(self.output_ids),
            finish_reason=self.finish_reason,
            prompt_tokens=len(self.prompt_ids),
            logprobs=self.logprobs,
        )


def accept_rows(decoders: Sequence[SequenceDecoder], logits: torch.Tensor) -> list[str]:
    """Advance each decoder by the token sampled from its row of `logits` (B, V), batched.

    Returns each decoder's newly shown text. Penalties shape the sampling distribution;
    logprobs report the raw model (as vLLM).
    """
    for decoder in decoders:
        if decoder.finished:
            raise RuntimeError("sequence already finished")
    logits = logits.detach().to("cpu", torch.float32)  # (B, V)
    choices = sample_rows(
        logits,
        [d.params for d in decoders],
        [d.draws for d in decoders],
        prompt_counts=[d.prompt_counts if d.penalised else None for d in decoders],
        output_counts=[d.output_counts if d.penalised else None for d in decoders],
        banned=[d.banned_tokens() for d in decoders],
    )
    return [
        decoder._push(token, logprob, logits, row)
        for row, (decoder, (token, logprob)) in enumerate(zip(decoders, choices, strict=True))
    ]
