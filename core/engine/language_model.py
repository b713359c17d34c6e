"""`LanguageModel`: a loaded BDH model with its metadata, and direct (unscheduled) generation.

`generate` runs its prompts as one fixed batch through the recurrent form: each prompt is
prefilled into its own state, choices copy that state, then one batched `decode_step` per
token advances every unfinished sequence, each at its own position. The serving path uses the
continuous-batching scheduler instead; both share `SequenceDecoder`, so both sample alike.
`mode="recompute"` re-runs the whole sequence per token, as the official `generate` does; it
exists as the benchmark baseline.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any, Literal

import torch

from .model import BDH, BDHConfig
from .sampling import SamplingParams
from .sequence import CompletionOutput, SequenceDecoder, accept_rows
from .tokenizer import ByteTokenizer

Mode = Literal["recurrent", "recompute"]
PREFILL_CHUNK = 256


class CompletionStream(Iterator[str]):
    """The text pieces of one streamed completion; ``output`` once the stream is exhausted."""

    def __init__(
        self, sequence: SequenceDecoder, steps: Generator[tuple[SequenceDecoder, str], None, None]
    ) -> None:
        self._sequence = sequence
        self._steps = steps
        self.output: CompletionOutput | None = None

    def __next__(self) -> str:
        for _, delta in self._steps:
            if delta:
                return delta
        self.output = self._sequence.output()
        raise StopIteration

    def close(self) -> None:
        """Stop generating; ``output`` then holds what was generated so far."""
        self._steps.close()
        if self.output is None:
            self.output = self._sequence.output()


class LanguageModel:
    def __init__(self, name: str, model: BDH, metadata: dict[str, Any] | None = None) -> None:
        self.name = name
        self.model = model.eval()
        self.metadata = metadata or {}
        self.tokenizer = ByteTokenizer()

    @property
    def config(self) -> BDHConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.lm_head.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.lm_head.dtype

    def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise ValueError("prompt must not be empty: BDH needs at least one byte of context")
        if any(not 0 <= i < self.config.vocab_size for i in ids):
            raise ValueError(f"prompt token ids must be in [0, {self.config.vocab_size})")
        return ids

    # ----------------------------------------------------------------------------------------

    def generate(
        self,
        prompt: str | list[str],
        params: SamplingParams | None = None,
        mode: Mode = "recurrent",
    ) -> str | list[str]:
        """Text of the first choice for one prompt, or one text per prompt for a list."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        outputs = self.complete(prompts, params or SamplingParams(), mode=mode)
        firsts = [o.text for o in outputs if o.index == 0]
        return firsts[0] if isinstance(prompt, str) else firsts

    def complete(
        self,
        prompts: list[str] | list[list[int]],
        params: SamplingParams,
        mode: Mode = "recurrent",
    ) -> list[CompletionOutput]:
        """Every choice of every prompt, ordered by (prompt_index, index)."""
        sequences = self._sequences(prompts, params)
        for _ in self._run(sequences, mode):
            pass
        return [s.output() for s in sequences]

    def stream(
        self, prompt: str, params: SamplingParams | None = None, mode: Mode = "recurrent"
    ) -> CompletionStream:
        """Text pieces of one completion as they become final (UTF-8 safe, stops held back).

        The returned iterator also tells, once exhausted, the whole `CompletionOutput` (token
        counts, finish reason) as ``.output``; closing it early stops the generation.
        """
        params = params or SamplingParams()
        if params.n != 1:
            raise ValueError("stream() produces one choice; use complete() for n > 1")
        sequences = self._sequences([prompt], params)
        return CompletionStream(sequences[0], self._run(sequences, mode))

    # ----------------------------------------------------------------------------------------

    def _sequences(
        self, prompts: list[str] | list[list[int]], params: SamplingParams
    ) -> list[SequenceDecoder]:
        if not prompts:
            raise ValueError("at least one prompt is required")
        V = self.config.vocab_size
        return [
            SequenceDecoder(ids, params, vocab_size=V, choice=c, prompt_index=p)
            for p, ids in enumerate(self.encode_prompt(x) for x in prompts)
            for c in range(params.n)
        ]

    @torch.no_grad()
    def _run(
        self, sequences: list[SequenceDecoder], mode: Mode
    ) -> Generator[tuple[SequenceDecoder, str], None, None]:
        if mode == "recompute":
            yield from self._run_recompute(sequences)
            return
        if mode != "recurrent":
            raise ValueError(f"unknown mode {mode!r}")
        states, first_logits = self._prefill_all(sequences)
        active = list(range(len(sequences)))
        texts = accept_rows(sequences, torch.stack(first_logits))  # (B, V) logits
        yield from zip(sequences, texts, strict=True)
        state = torch.cat(states, dim=1)  # (L, B, nh, N, D)
        while True:
            keep = [j for j, i in enumerate(active) if not sequences[i].finished]
            if not keep:
                return
            if len(keep) < len(active):  # compact only when a sequence ends
                state = state[:, torch.tensor(keep, device=state.device)]
                active = [active[j] for j in keep]
            seqs = [sequences[i] for i in active]
            tokens = torch.tensor([s.last_token for s in seqs], device=self.device)
            positions = torch.tensor([s.position for s in seqs], device=self.device)
            logits = self.model.decode_step(tokens, positions, state)  # (B, V)
            yield from zip(seqs, accept_rows(seqs, logits), strict=True)

    def _prefill_all(
        self, sequences: list[SequenceDecoder]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Prefill each distinct prompt once; choices of a prompt copy its state."""
        states, first_logits = [], []
        cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for seq in sequences:
            if seq.prompt_index not in cache:
                ids = torch.tensor([seq.prompt_ids], device=self.device)
                logits, state = self.model.prefill(ids, chunk_size=PREFILL_CHUNK)
                cache[seq.prompt_index] = (logits[0], state)
                states.append(state)
            else:
                states.append(cache[seq.prompt_index][1].clone())
            first_logits.append(cache[seq.prompt_index][0])
        return states, first_logits

    def _run_recompute(
        self, sequences: list[SequenceDecoder]
    ) -> Generator[tuple[SequenceDecoder, str], None, None]:
        while True:
            pending = [s for s in sequences if not s.finished]
            if not pending:
                return
            for seq in pending:
                ids = torch.tensor([seq.prompt_ids + seq.output_ids], device=self.device)
                logits, _ = self.model(ids)
                yield seq, seq.accept(logits[0, -1])
