"""Sampling parameters, logits processing, seeded token choice and stop strings."""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from core.engine import kernels
from core.engine.sampling import (
    SamplingParams,
    StopMatcher,
    UniformDraws,
    apply_penalties,
    count_tokens,
    make_generator,
    sample_next,
    sample_rows,
    top_logprobs,
)

# Token probabilities 0.5 / 0.3 / 0.15 / 0.05, deliberately not in index order, so that a
# mix-up between sorted positions and token ids shows.
PROBS = {3: 0.5, 0: 0.3, 2: 0.15, 1: 0.05}


def known_logits() -> torch.Tensor:
    logits = torch.empty(4)
    for token, p in PROBS.items():
        logits[token] = math.log(p)
    return logits


def draw(logits: torch.Tensor, params: SamplingParams, count: int, seed: int = 0) -> list[int]:
    generator = make_generator(seed)
    return [sample_next(logits, params, generator)[0] for _ in range(count)]


# --- SamplingParams ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": -1}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 2}, "min_p"),
        ({"n": 0}, "n"),
        ({"n": 129}, "n"),
        ({"logprobs": 21}, "logprobs"),
        ({"logprobs": -1}, "logprobs"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"repetition_penalty": 2.5}, "repetition_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": ["ok", ""]}, "stop"),
        ({"stop": ["x"] * 17}, "stop"),
        ({"temprature": 0.5}, "temprature"),
        ({"logit_bias": {65: 100.5}}, "logit_bias"),
        ({"logit_bias": {-1: 1.0}}, "logit_bias"),
    ],
)
def test_invalid_parameter_is_named(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        SamplingParams(**kwargs)
    errors = caught.value.errors()
    assert len(errors) == 1
    assert errors[0]["loc"][0] == field
    assert field in str(caught.value)


def test_defaults_and_accepted_values() -> None:
    params = SamplingParams()
    assert (params.max_tokens, params.temperature, params.top_k, params.top_p) == (16, 1.0, 0, 1.0)
    assert (params.n, params.logprobs, params.seed, params.stop) == (1, None, None, [])
    assert not params.greedy
    assert SamplingParams(temperature=0).greedy
    assert SamplingParams(top_k=-1).top_k == -1
    assert SamplingParams(stop="###").stop == ["###"]
    assert SamplingParams(logprobs=0, n=128, stop=["a"] * 16).logprobs == 0


def test_params_are_frozen() -> None:
    with pytest.raises(ValidationError):
        SamplingParams().temperature = 0.5  # type: ignore[misc]


# --- generators and seeds ---------------------------------------------------------------------


def test_same_seed_gives_same_sequence_and_different_seed_differs() -> None:
    logits = torch.randn(256, generator=torch.Generator().manual_seed(7))
    params = SamplingParams(temperature=1.0)
    first = draw(logits, params, 50, seed=1234)
    assert first == draw(logits, params, 50, seed=1234)
    assert first != draw(logits, params, 50, seed=1235)
    assert len(set(first)) > 10  # really sampling, not stuck on one token


def test_unseeded_generators_differ_and_any_integer_seed_works() -> None:
    states = {bytes(make_generator(None).get_state().tolist()) for _ in range(3)}
    assert len(states) == 3
    for seed in (-1, 0, 2**64 - 1, 2**70):
        make_generator(seed)


def test_seeded_row_samples_the_same_alone_or_in_a_batch() -> None:
    rows = torch.randn(3, 256, generator=torch.Generator().manual_seed(3))  # (B, V)
    params = [SamplingParams(temperature=0.9, seed=s) for s in (11, 12, 13)]
    alone = draw(rows[1], params[1], 20, seed=12)
    generators = [make_generator(p.seed) for p in params]
    batched = [sample_rows(rows, params, generators)[1][0] for _ in range(20)]
    assert batched == alone


def test_every_kind_of_row_samples_the_same_alone_or_in_a_mixed_batch() -> None:
    """Greedy, plain, filtered and penalised rows in one batch each draw as if alone."""
    rows = torch.randn(6, 256, generator=torch.Generator().manual_seed(8))  # (B, V)
    params = [
        SamplingParams(temperature=0),
        SamplingParams(temperature=0.7, seed=1),
        SamplingParams(temperature=1.2, top_p=0.9, seed=2),
        SamplingParams(temperature=0.9, top_k=20, min_p=0.05, seed=3),
        SamplingParams(temperature=0.8, repetition_penalty=1.3, frequency_penalty=0.5, seed=4),
        SamplingParams(temperature=1.0, top_k=5, presence_penalty=1.0, seed=5),
    ]
    prompt = count_tokens([1, 2, 3, 3], 256).float()
    counts = [None, None, None, None, prompt, prompt]

    def run_batched() -> list[list[int]]:
        generators = [make_generator(p.seed) for p in params]
        draws = []
        for _ in range(15):
            choices = sample_rows(
                rows, params, generators, prompt_counts=counts, output_counts=counts
            )
            draws.append([token for token, _ in choices])
        return [list(column) for column in zip(*draws, strict=True)]

    def run_alone(i: int) -> list[int]:
        generator = make_generator(params[i].seed)
        return [
            sample_next(
                rows[i], params[i], generator, prompt_counts=counts[i], output_counts=counts[i]
            )[0]
            for _ in range(15)
        ]

    batched = run_batched()
    assert batched == [run_alone(i) for i in range(len(params))]
    assert len(set(batched[1])) > 3  # the sampled rows really sample
    assert batched[0] == [int(rows[0].argmax())] * 15


def test_sample_rows_checks_lengths() -> None:
    with pytest.raises(ValueError, match="need 2 params"):
        sample_rows(torch.zeros(2, 4), [SamplingParams()], [make_generator(0)])


# --- token choice -----------------------------------------------------------------------------


def test_greedy_is_argmax_with_lowest_index_on_ties() -> None:
    greedy = SamplingParams(temperature=0)
    assert draw(known_logits(), greedy, 5) == [3] * 5
    tied = torch.tensor([0.0, 2.0, 1.0, 2.0])
    assert sample_next(tied, greedy, make_generator(0))[0] == 1


def test_logprob_is_from_raw_logits() -> None:
    logits = known_logits()
    for params in (SamplingParams(temperature=0), SamplingParams(temperature=0.3, top_k=2)):
        token, logprob = sample_next(logits, params, make_generator(5))
        assert logprob == pytest.approx(math.log(PROBS[token]), abs=1e-6)


def test_plain_sampling_follows_the_distribution() -> None:
    counts = Counter(draw(known_logits(), SamplingParams(), 4000))
    for token, p in PROBS.items():
        assert counts[token] / 4000 == pytest.approx(p, abs=0.03)


def test_temperature_sharpens_the_distribution() -> None:
    # At T = 0.5 probabilities become p**2 / sum(p**2).
    counts = Counter(draw(known_logits(), SamplingParams(temperature=0.5), 4000))
    norm = sum(p**2 for p in PROBS.values())
    for token, p in PROBS.items():
        assert counts[token] / 4000 == pytest.approx(p**2 / norm, abs=0.03)


def test_top_k_one_and_tiny_top_p_equal_greedy() -> None:
    logits = torch.randn(256, generator=torch.Generator().manual_seed(1))
    expected = int(torch.argmax(logits))
    assert set(draw(logits, SamplingParams(temperature=1.5, top_k=1), 50)) == {expected}
    assert set(draw(logits, SamplingParams(temperature=1.5, top_p=1e-6), 50)) == {expected}


@pytest.mark.parametrize(
    ("params", "kept"),
    [
        (SamplingParams(top_k=2), {3, 0}),
        (SamplingParams(top_k=3), {3, 0, 2}),
        (SamplingParams(top_k=-1), {3, 0, 2, 1}),
        (SamplingParams(top_p=0.75), {3, 0}),  # 0.5 < 0.75 <= 0.8
        (SamplingParams(top_p=0.9), {3, 0, 2}),  # 0.8 < 0.9 <= 0.95
        (SamplingParams(min_p=0.5), {3, 0}),  # threshold 0.25
        (SamplingParams(min_p=0.2), {3, 0, 2}),  # threshold 0.1
        (SamplingParams(top_k=3, min_p=0.4), {3, 0}),  # threshold 0.2 survives top-k
    ],
)
def test_filters_keep_exactly_the_expected_tokens(params: SamplingParams, kept: set[int]) -> None:
    assert set(draw(known_logits(), params, 800)) == kept


def test_top_p_renormalises_over_the_kept_tokens() -> None:
    counts = Counter(draw(known_logits(), SamplingParams(top_p=0.75), 4000))
    assert counts[3] / 4000 == pytest.approx(0.5 / 0.8, abs=0.03)


def reference_filtered_probs(
    scaled: np.ndarray, top_k: int, top_p: float, min_p: float
) -> np.ndarray:
    """Top-k, top-p and min-p the plain way: every token sorted (stable, descending)."""
    order = np.argsort(-scaled, kind="stable")
    ranked = np.exp(scaled[order].astype(np.float64) - scaled[order[0]])
    if 0 < top_k < len(scaled):
        ranked[top_k:] = 0.0
    ranked /= ranked.sum()
    if top_p < 1.0:
        before = np.cumsum(ranked) - ranked
        ranked[1:][before[1:] >= top_p] = 0.0
        ranked /= ranked.sum()
    if min_p > 0.0:
        ranked[1:][ranked[1:] < min_p * ranked[0]] = 0.0
        ranked /= ranked.sum()
    probs = np.empty_like(ranked)
    probs[order] = ranked
    return probs


@pytest.mark.parametrize(
    ("top_k", "top_p", "min_p"),
    [(0, 0.95, 0.0), (0, 0.5, 0.0), (0, 0.999, 0.0), (0, 1e-6, 0.0), (40, 1.0, 0.0),
     (40, 0.9, 0.05), (0, 1.0, 0.1), (0, 0.9, 0.02), (300, 0.8, 0.0)],
)  # fmt: skip
def test_the_kernels_filters_equal_a_full_sort(top_k: int, top_p: float, min_p: float) -> None:
    """The kernel sorts only the candidates top-p can keep; it keeps what a sort of every
    token keeps, with the same mass, on peaked and flat rows with ties."""
    kernel = kernels.sampling_kernels()
    generator = np.random.default_rng(4)
    for spread in (0.3, 1.0, 3.0, 8.0):
        scaled = (generator.standard_normal(256) * spread).astype(np.float32)
        scaled[10:20] = scaled[5]  # ties, kept in index order
        probs, ranked = np.empty(256), np.empty(256)
        kernel.filtered_probs(scaled, top_k, top_p, min_p, ranked, probs)
        expected = reference_filtered_probs(scaled, top_k, top_p, min_p)
        assert np.array_equal(probs > 0, expected > 0)
        np.testing.assert_allclose(probs, expected, rtol=1e-12, atol=1e-15)


def test_uniform_draws_are_one_draw_at_a_time_in_blocks() -> None:
    """A sequence's block draws are the numbers torch.rand(1) gives one per token, across
    block boundaries, so a seed samples the same text either way."""
    draws = UniformDraws(make_generator(21))
    one_at_a_time = make_generator(21)
    count = 2 * UniformDraws.BLOCK + 5
    expected = [float(torch.rand(1, generator=one_at_a_time)) for _ in range(count)]
    assert [draws() for _ in range(count)] == expected
    params = SamplingParams(temperature=0.9, top_p=0.9)
    logits = torch.randn(256, generator=torch.Generator().manual_seed(2))
    blocked = UniformDraws(make_generator(8))
    assert [sample_next(logits, params, blocked)[0] for _ in range(80)] == draw(
        logits, params, 80, seed=8
    )


def test_top_logprobs_lists_best_first_with_ties_by_index() -> None:
    logits = torch.tensor([1.0, 3.0, 3.0, 0.0, 2.0])
    expected = torch.log_softmax(logits, dim=-1)
    result = top_logprobs(logits, 3)
    assert [t for t, _ in result] == [1, 2, 4]
    assert [v for _, v in result] == pytest.approx([float(expected[t]) for t in (1, 2, 4)])
    assert top_logprobs(logits, 0) == []
    assert len(top_logprobs(logits, 20)) == 5


# --- penalties --------------------------------------------------------------------------------

LOGITS = torch.tensor([2.0, -1.0, 0.5, -0.5, 3.0])
PROMPT_COUNTS = torch.tensor([1, 1, 0, 0, 0])
OUTPUT_COUNTS = torch.tensor([0, 0, 2, 1, 0])


def test_count_tokens() -> None:
    assert count_tokens([2, 2, 3], 5).tolist() == OUTPUT_COUNTS.tolist()
    assert count_tokens([], 3).tolist() == [0, 0, 0]


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits() -> None:
    params = SamplingParams(repetition_penalty=2.0)
    result = apply_penalties(LOGITS, params, PROMPT_COUNTS, OUTPUT_COUNTS)
    assert result.tolist() == [1.0, -2.0, 0.25, -1.0, 3.0]


def test_frequency_and_presence_penalties_use_output_counts_only() -> None:
    params = SamplingParams(frequency_penalty=0.5, presence_penalty=0.25)
    result = apply_penalties(LOGITS, params, PROMPT_COUNTS, OUTPUT_COUNTS)
    assert result.tolist() == [2.0, -1.0, -0.75, -1.25, 3.0]
    negative = SamplingParams(frequency_penalty=-1.0, presence_penalty=-0.5)
    assert apply_penalties(LOGITS, negative, None, OUTPUT_COUNTS).tolist() == [
        2.0, -1.0, 3.0, 1.0, 3.0
    ]  # fmt: skip


def test_all_penalties_together_leave_the_input_untouched() -> None:
    original = LOGITS.clone()
    params = SamplingParams(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)
    result = apply_penalties(LOGITS, params, PROMPT_COUNTS, OUTPUT_COUNTS)
    assert result.tolist() == [1.0, -2.0, -1.0, -1.75, 3.0]
    assert torch.equal(LOGITS, original)
    assert apply_penalties(LOGITS, SamplingParams(), PROMPT_COUNTS, OUTPUT_COUNTS).tolist() == (
        LOGITS.tolist()
    )


def test_penalties_steer_greedy_choice() -> None:
    logits = torch.tensor([1.0, 0.9, 0.0])
    params = SamplingParams(temperature=0, presence_penalty=0.5)
    generator = make_generator(0)
    assert sample_next(logits, params, generator)[0] == 0
    output_counts = count_tokens([0], 3)
    token, logprob = sample_next(logits, params, generator, output_counts=output_counts)
    assert token == 1
    assert logprob == pytest.approx(float(torch.log_softmax(logits, dim=-1)[1]))


def test_logit_bias_steers_greedy_and_sampled_choices_but_not_logprobs() -> None:
    logits = torch.tensor([1.0, 0.9, 0.0, -1.0])
    original = logits.clone()
    raw = torch.log_softmax(logits, dim=-1)
    banned = SamplingParams(temperature=0, logit_bias={0: -100})
    token, logprob = sample_next(logits, banned, make_generator(0))
    assert token == 1 and logprob == pytest.approx(float(raw[1]))  # logprobs stay raw
    forced = SamplingParams(temperature=1.0, top_p=0.9, logit_bias={3: 100})
    generator = make_generator(1)
    assert {sample_next(logits, forced, generator)[0] for _ in range(50)} == {3}
    assert torch.equal(logits, original)  # the caller's logits are untouched


def test_a_biased_row_samples_the_same_alone_or_beside_unbiased_rows() -> None:
    logits = torch.randn(3, 8, generator=torch.Generator().manual_seed(3))
    params = [
        SamplingParams(temperature=0.7, seed=1),
        SamplingParams(temperature=0.7, seed=2, logit_bias={5: 3.0, 1: -2.5}),
        SamplingParams(temperature=0, logit_bias={7: 50}),
    ]
    batch = sample_rows(logits, params, [make_generator(p.seed) for p in params])
    alone = [sample_next(logits[i], p, make_generator(p.seed))[0] for i, p in enumerate(params)]
    assert [token for token, _ in batch] == alone
    assert batch[2][0] == 7


def test_logit_bias_outside_the_vocabulary_is_an_error() -> None:
    params = SamplingParams(temperature=0, logit_bias={9: 1.0})
    with pytest.raises(ValueError, match="not in the vocabulary"):
        sample_next(torch.zeros(4), params, make_generator(0))


# --- stop strings -----------------------------------------------------------------------------


def test_stop_split_across_pushes_is_never_emitted() -> None:
    matcher = StopMatcher(["###"])
    assert matcher.push("ab#") == ("ab", False)
    assert matcher.push("#") == ("", False)
    assert matcher.push("#cd") == ("", True)
    assert matcher.matched == "###"
    assert matcher.stopped
    assert matcher.push("more") == ("", True)
    assert matcher.flush() == ""


def test_partial_prefix_is_released_when_it_stops_matching() -> None:
    matcher = StopMatcher(["END"])
    assert matcher.push("the EN") == ("the ", False)
    assert matcher.push("X") == ("ENX", False)
    assert matcher.matched is None


def test_overlapping_prefix_holds_only_what_can_still_match() -> None:
    matcher = StopMatcher(["aab"])
    assert [matcher.push(c) for c in "aaa"] == [("", False), ("", False), ("a", False)]
    assert matcher.push("b") == ("", True)


def test_earliest_of_several_stop_strings_wins() -> None:
    matcher = StopMatcher(["\n\n", "STOP"])
    assert matcher.push("hello\n") == ("hello", False)
    assert matcher.push("\nworld") == ("", True)
    assert matcher.matched == "\n\n"
    other = StopMatcher(["\n\n", "STOP"])
    assert other.push("x STOP y\n\n") == ("x ", True)
    assert other.matched == "STOP"


def test_shorter_stop_inside_a_longer_ones_prefix_still_stops() -> None:
    matcher = StopMatcher(["abc", "b"])
    assert matcher.push("a") == ("", False)
    assert matcher.push("b") == ("a", True)
    assert matcher.matched == "b"


def test_stop_at_the_very_start() -> None:
    matcher = StopMatcher(["<|end|>"])
    assert matcher.push("<|end|>after") == ("", True)
    assert matcher.matched == "<|end|>"


def test_flush_releases_held_text_once() -> None:
    matcher = StopMatcher(["END"])
    assert matcher.push("done E") == ("done ", False)
    assert matcher.flush() == "E"
    assert matcher.flush() == ""


def test_without_stop_strings_text_passes_straight_through() -> None:
    matcher = StopMatcher([])
    assert matcher.push("anything ###") == ("anything ###", False)
    assert matcher.flush() == ""


def test_random_chunking_matches_cutting_at_the_first_stop() -> None:
    rng = random.Random(0)
    stops = ["ab", "bba", "cac"]
    for _ in range(500):
        text = "".join(rng.choice("abcd") for _ in range(rng.randint(0, 20)))
        hits = [i for i in (text.find(s) for s in stops) if i != -1]
        expected = text[: min(hits)] if hits else text
        matcher = StopMatcher(stops)
        emitted, position = [], 0
        while position < len(text) and not matcher.stopped:
            size = rng.randint(1, 4)
            emitted.append(matcher.push(text[position : position + size])[0])
            position += size
        emitted.append(matcher.flush())
        assert "".join(emitted) == expected
        assert matcher.stopped == bool(hits)


def test_allowed_and_banned_tokens_mask_the_choice_but_not_the_logprob() -> None:
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0]])  # token 0 is the greedy choice
    greedy = SamplingParams(temperature=0.0, allowed_token_ids=[1, 2])
    (token, logprob), *_ = sample_rows(logits, [greedy], [make_generator(0)], banned=[[1]])
    assert token == 2
    assert logprob == pytest.approx(torch.log_softmax(logits[0], -1)[2].item())


def test_bans_give_way_when_nothing_would_be_left() -> None:
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0]])
    params = SamplingParams(temperature=0.0, allowed_token_ids=[3])
    (token, _), *_ = sample_rows(logits, [params], [make_generator(0)], banned=[[3]])
    assert token == 3


def test_min_tokens_cannot_exceed_max_tokens() -> None:
    with pytest.raises(ValidationError, match="min_tokens"):
        SamplingParams(max_tokens=4, min_tokens=5)


def test_stop_matcher_can_keep_the_stop_string_and_wait_to_be_armed() -> None:
    kept = StopMatcher(["END"], include=True)
    assert kept.push("abEN") == ("ab", False)
    assert kept.push("Dxyz") == ("END", True)
    unarmed = StopMatcher(["END"])
    assert unarmed.push("xEND", armed=False) == ("xEND", False)
    assert unarmed.push("yEND") == ("y", True)
