"""Generation through the recurrent form: batching, greedy exactness, seeds, streaming."""

from __future__ import annotations

import pytest
import torch

from core.engine import LanguageModel, SamplingParams
from core.engine.sequence import SequenceDecoder


def test_greedy_equals_argmax_of_the_parallel_forward(nano_lm: LanguageModel) -> None:
    prompt = "First Citizen:"
    out = nano_lm.complete([prompt], SamplingParams(max_tokens=40, temperature=0.0))[0]
    ids = list(prompt.encode())
    for token in out.token_ids:
        with torch.no_grad():
            logits, _ = nano_lm.model(torch.tensor([ids]))
        assert token == int(logits[0, -1].argmax())
        ids.append(token)
    assert out.finish_reason == "length"
    assert out.completion_tokens == 40


def test_recompute_mode_gives_the_same_greedy_tokens(nano_lm: LanguageModel) -> None:
    params = SamplingParams(max_tokens=30, temperature=0.0)
    fast = nano_lm.complete(["abc"], params)[0]
    slow = nano_lm.complete(["abc"], params, mode="recompute")[0]
    assert fast.token_ids == slow.token_ids


def test_a_batch_of_different_lengths_equals_each_alone(nano_lm: LanguageModel) -> None:
    prompts = ["a", "The quick brown fox", "12345678901234567890123456789012345", "x y"]
    params = SamplingParams(max_tokens=25, temperature=0.9, top_p=0.95, seed=7)
    batched = nano_lm.complete(prompts, params)
    for i, prompt in enumerate(prompts):
        alone = nano_lm.complete([prompt], params)[0]
        assert batched[i].prompt_index == i
        assert batched[i].token_ids == alone.token_ids


def test_seeded_sampling_is_reproducible_and_seed_dependent(nano_lm: LanguageModel) -> None:
    params = SamplingParams(max_tokens=30, temperature=1.0, seed=123)
    first = nano_lm.complete(["Hello"], params)[0].token_ids
    second = nano_lm.complete(["Hello"], params)[0].token_ids
    other = nano_lm.complete(["Hello"], params.model_copy(update={"seed": 124}))[0].token_ids
    assert first == second
    assert first != other


def test_n_choices_differ_and_each_is_reproducible(nano_lm: LanguageModel) -> None:
    params = SamplingParams(max_tokens=20, temperature=1.0, seed=5, n=3)
    outs = nano_lm.complete(["Hi"], params)
    assert [o.index for o in outs] == [0, 1, 2]
    assert len({tuple(o.token_ids) for o in outs}) == 3
    again = nano_lm.complete(["Hi"], params)
    assert [o.token_ids for o in outs] == [o.token_ids for o in again]


def test_stream_pieces_join_to_the_full_text(nano_lm: LanguageModel) -> None:
    params = SamplingParams(max_tokens=50, temperature=1.0, seed=9)
    pieces = list(nano_lm.stream("Once", params))
    assert "".join(pieces) == nano_lm.generate("Once", params)
    assert all(pieces)


def test_stop_string_is_never_emitted(nano_lm: LanguageModel) -> None:
    params = SamplingParams(max_tokens=40, temperature=0.0)
    full = nano_lm.complete(["stop test"], params)[0]
    stop = full.text[5:8]
    assert len(stop) == 3, full.text  # 40 greedy tokens leave room for a stop string
    stopped = nano_lm.complete(["stop test"], params.model_copy(update={"stop": [stop]}))[0]
    assert stopped.finish_reason == "stop"
    assert stop not in stopped.text
    assert stopped.text == full.text[: full.text.index(stop)]
    assert "".join(nano_lm.stream("stop test", params.model_copy(update={"stop": [stop]}))) == (
        stopped.text
    )


def _one_hot(token: int) -> torch.Tensor:
    logits = torch.full((256,), -50.0)
    logits[token] = 50.0
    return logits


def test_streaming_never_splits_a_multibyte_character() -> None:
    target = "é🐉!".encode()
    seq = SequenceDecoder([1], SamplingParams(max_tokens=len(target), temperature=0.0))
    deltas = [seq.accept(_one_hot(b)) for b in target]
    assert deltas == ["", "é", "", "", "", "🐉", "!"]
    assert seq.text == "é🐉!"


def test_an_unfinished_character_at_the_end_becomes_a_replacement() -> None:
    seq = SequenceDecoder([1], SamplingParams(max_tokens=2, temperature=0.0))
    deltas = [seq.accept(_one_hot(b)) for b in "🐉".encode()[:2]]
    assert deltas == ["", "\ufffd"]
    assert seq.finish_reason == "length"


def test_logprobs_are_reported_per_token(nano_lm: LanguageModel) -> None:
    params = SamplingParams(max_tokens=5, temperature=0.0, logprobs=3)
    out = nano_lm.complete(["abc"], params)[0]
    assert out.logprobs is not None and len(out.logprobs) == 5
    for entry, token in zip(out.logprobs, out.token_ids, strict=True):
        assert entry.token == token
        assert len(entry.top) == 3
        assert entry.top[0][0] == token  # greedy picks the most likely token
        assert entry.logprob == pytest.approx(entry.top[0][1])


def test_empty_prompt_is_refused(nano_lm: LanguageModel) -> None:
    with pytest.raises(ValueError, match="empty"):
        nano_lm.generate("", SamplingParams(max_tokens=3))
