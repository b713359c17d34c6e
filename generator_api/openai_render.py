"""Engine outputs -> OpenAI response pieces: logprobs in both shapes, usage, SSE framing.

Tokens are bytes, so a token's display string is `ByteTokenizer.token_text` (printable ASCII as
itself, any other byte as ``bytes:\\xNN``, as vLLM shows them) and its ``bytes`` are the one
byte. Legacy ``text_offset`` values are character offsets into the returned text: every byte of
a multi-byte character points at that character's start.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel

from core.engine.sequence import CompletionOutput, TokenLogprob
from core.engine.tokenizer import ByteTokenizer, IncrementalDecoder

from .openai_protocol import (
    ChatLogprobs,
    ChatTokenLogprob,
    CompletionLogprobs,
    PromptLogprob,
    PromptLogprobs,
    TopLogprob,
    Usage,
)

_TOKENIZER = ByteTokenizer()
DONE = "data: [DONE]\n\n"


def sse(payload: BaseModel | dict[str, Any]) -> str:
    """One Server-Sent Events message carrying `payload` as JSON, as OpenAI frames them."""
    if isinstance(payload, BaseModel):
        data = payload.model_dump_json(exclude_unset=True)
    else:
        data = json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


def token_text(token: int) -> str:
    return _TOKENIZER.token_text(token)


class OffsetTracker:
    """Character offset of each token of one choice's token stream (UTF-8 aware)."""

    def __init__(self, start: int = 0) -> None:
        self._chars = start
        self._decoder = IncrementalDecoder()

    def offset(self, token: int) -> int:
        """The offset of `token` (the start of the character it belongs to); then consume it."""
        offset = self._chars
        self._chars += len(self._decoder.push(token))
        return offset


def completion_logprobs(
    entries: Sequence[TokenLogprob | None],
    tokens: Sequence[int],
    offsets: OffsetTracker,
) -> CompletionLogprobs:
    """The legacy shape; a None entry (the first prompt token when echoing) has no logprob.

    ``top_logprobs`` holds the top-k alternatives and always the chosen token, as OpenAI does
    (so up to k + 1 entries).
    """
    result = CompletionLogprobs()
    for token, entry in zip(tokens, entries, strict=True):
        result.tokens.append(token_text(token))
        result.text_offset.append(offsets.offset(token))
        if entry is None:
            result.token_logprobs.append(None)
            result.top_logprobs.append(None)
            continue
        result.token_logprobs.append(entry.logprob)
        top = {token_text(t): lp for t, lp in entry.top}
        top.setdefault(token_text(token), entry.logprob)
        result.top_logprobs.append(top)
    return result


def chat_logprobs(entries: Iterable[TokenLogprob]) -> ChatLogprobs:
    return ChatLogprobs(
        content=[
            ChatTokenLogprob(
                token=token_text(entry.token),
                logprob=entry.logprob,
                bytes=[entry.token],
                top_logprobs=[
                    TopLogprob(token=token_text(t), logprob=lp, bytes=[t]) for t, lp in entry.top
                ],
            )
            for entry in entries
        ]
    )


def vllm_prompt_logprobs(entries: Sequence[TokenLogprob | None]) -> PromptLogprobs:
    """vLLM's prompt_logprobs: per prompt token, its own logprob and rank plus the top k
    alternatives (ranked 1..k), keyed by token id; None for the first token."""
    result: PromptLogprobs = []
    for entry in entries:
        if entry is None:
            result.append(None)
            continue
        ranked = {
            str(token): PromptLogprob(logprob=lp, rank=rank, decoded_token=token_text(token))
            for rank, (token, lp) in enumerate(entry.top, start=1)
        }
        ranked.setdefault(
            str(entry.token),
            PromptLogprob(
                logprob=entry.logprob, rank=entry.rank or 0, decoded_token=token_text(entry.token)
            ),
        )
        result.append(ranked)
    return result


def usage_of(prompt_lengths: Sequence[int], outputs: Iterable[CompletionOutput]) -> Usage:
    """Exact counts (a token is a byte): each prompt once, however many choices it has."""
    prompt = sum(prompt_lengths)
    completion = sum(output.completion_tokens for output in outputs)
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def choice_index(prompt_index: int, index: int, n: int) -> int:
    """OpenAI numbers the choices of several prompts consecutively: prompt-major."""
    return prompt_index * n + index
