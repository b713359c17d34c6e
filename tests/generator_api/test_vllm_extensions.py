"""vLLM's sampling and streaming extensions, sent as benchmark and eval tools send them: through
the openai SDK's ``extra_body``, on completions and on chat, each checked for its effect.

Most cases restrict the byte model to a few letters with ``allowed_token_ids`` so that text and
tokens line up one to one; a seed makes the baseline and the request under test draw alike up
to the point where the extension changes something.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import openai
import pytest

from .conftest import MODEL

ENDPOINTS = ["completions", "chat"]
LETTERS = list(b"abc")


@dataclass
class Result:
    text: str
    tokens: list[int]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    raw: Any


def _token_id(shown: str) -> int:
    # The legacy logprobs shape shows printable ASCII as itself, other bytes as "bytes:\xNN".
    return int(shown[len("bytes:\\x") :], 16) if shown.startswith("bytes:\\x") else ord(shown)


def generate(
    client: openai.OpenAI,
    endpoint: str,
    *,
    prompt: str = "Once upon a time",
    max_tokens: int = 30,
    seed: int = 11,
    **extra: Any,
) -> Result:
    common: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": max_tokens,
        "temperature": 1.0,
        "seed": seed,
        "extra_body": extra,
    }
    if endpoint == "completions":
        response = client.completions.create(prompt=prompt, logprobs=0, **common)
        choice = response.choices[0]
        assert choice.logprobs is not None and choice.logprobs.tokens is not None
        tokens = [_token_id(t) for t in choice.logprobs.tokens]
        text = choice.text
    else:
        response = client.chat.completions.create(
            messages=[{"role": "user", "content": prompt}], logprobs=True, **common
        )
        choice = response.choices[0]  # type: ignore[assignment]
        assert choice.logprobs is not None and choice.logprobs.content is not None
        tokens = [entry.bytes[0] for entry in choice.logprobs.content if entry.bytes]
        text = choice.message.content or ""  # type: ignore[attr-defined]
    assert response.usage is not None
    return Result(
        text=text,
        tokens=tokens,
        finish_reason=choice.finish_reason,
        prompt_tokens=response.usage.prompt_tokens,
        completion_tokens=response.usage.completion_tokens,
        raw=response,
    )


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_allowed_token_ids_restrict_every_token(client: openai.OpenAI, endpoint: str) -> None:
    free = generate(client, endpoint)
    assert not set(free.tokens) <= set(LETTERS)  # the model left alone strays elsewhere
    result = generate(client, endpoint, allowed_token_ids=LETTERS)
    assert result.completion_tokens == 30 and result.finish_reason == "length"
    assert set(result.tokens) <= set(LETTERS)
    assert result.text == bytes(result.tokens).decode()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_stop_token_ids_end_the_choice(client: openai.OpenAI, endpoint: str) -> None:
    base = generate(client, endpoint, allowed_token_ids=LETTERS)
    stop_id = base.tokens[5]
    cut = base.tokens.index(stop_id)
    result = generate(client, endpoint, allowed_token_ids=LETTERS, stop_token_ids=[stop_id])
    assert result.finish_reason == "stop"
    # As vLLM: the stop token is generated and counted, but not shown.
    assert result.tokens == base.tokens[: cut + 1]
    assert result.completion_tokens == cut + 1
    assert result.text == base.text[:cut]
    shown = generate(
        client,
        endpoint,
        allowed_token_ids=LETTERS,
        stop_token_ids=[stop_id],
        include_stop_str_in_output=True,
    )
    assert shown.text == base.text[: cut + 1]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_include_stop_str_in_output_keeps_the_stop_string(
    client: openai.OpenAI, endpoint: str
) -> None:
    base = generate(client, endpoint, allowed_token_ids=LETTERS)
    stop = base.text[6:8]
    cut = base.text.find(stop)
    hidden = generate(client, endpoint, allowed_token_ids=LETTERS, stop=[stop])
    assert hidden.finish_reason == "stop" and hidden.text == base.text[:cut]
    shown = generate(
        client, endpoint, allowed_token_ids=LETTERS, stop=[stop], include_stop_str_in_output=True
    )
    assert shown.finish_reason == "stop" and shown.text == base.text[: cut + len(stop)]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_min_tokens_hold_back_stop_ids_and_stop_strings(
    client: openai.OpenAI, endpoint: str
) -> None:
    base = generate(client, endpoint, allowed_token_ids=LETTERS)
    first = base.tokens[0]
    early = generate(client, endpoint, allowed_token_ids=LETTERS, stop_token_ids=[first])
    assert early.completion_tokens == 1 and early.finish_reason == "stop"
    held = generate(
        client, endpoint, allowed_token_ids=LETTERS, stop_token_ids=[first], min_tokens=10
    )
    assert held.completion_tokens >= 10
    assert first not in held.tokens[:10]  # banned while fewer than min_tokens were generated
    stop = chr(first)
    assert generate(client, endpoint, allowed_token_ids=LETTERS, stop=[stop]).text == ""
    late = generate(client, endpoint, allowed_token_ids=LETTERS, stop=[stop], min_tokens=10)
    assert late.completion_tokens >= 10
    assert stop in late.text[:9]  # the stop string occurred, but too early to end the choice


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_bad_words_are_never_generated(client: openai.OpenAI, endpoint: str) -> None:
    base = generate(client, endpoint, allowed_token_ids=LETTERS, max_tokens=60)
    assert "ab" in base.text and "c" in base.text
    result = generate(
        client, endpoint, allowed_token_ids=LETTERS, max_tokens=60, bad_words=["ab", "c"]
    )
    assert result.completion_tokens == 60
    assert "ab" not in result.text and "c" not in result.text


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(
    "field",
    [
        {"ignore_eos": True},
        {"skip_special_tokens": False},
        {"spaces_between_special_tokens": False},
        {"add_special_tokens": True},
        {"add_special_tokens": False},
    ],
    ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()),
)
def test_fields_without_special_tokens_change_nothing(
    client: openai.OpenAI, endpoint: str, field: dict[str, Any]
) -> None:
    # A byte vocabulary has no end-of-sequence or other special token to skip, add or ignore.
    base = generate(client, endpoint)
    result = generate(client, endpoint, **field)
    assert (result.tokens, result.text, result.finish_reason) == (
        base.tokens,
        base.text,
        base.finish_reason,
    )


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_truncate_prompt_tokens_keeps_the_prompts_end(client: openai.OpenAI, endpoint: str) -> None:
    if endpoint == "completions":
        long = generate(
            client, endpoint, prompt="a long prompt, cut short", truncate_prompt_tokens=5
        )
        short = generate(client, endpoint, prompt="short")
        assert long.prompt_tokens == 5
        assert long.tokens == short.tokens
    else:
        whole = generate(client, endpoint, prompt="a long prompt, cut short")
        cut = generate(
            client, endpoint, prompt="a long prompt, cut short", truncate_prompt_tokens=5
        )
        assert whole.prompt_tokens > 5 and cut.prompt_tokens == 5
    unbounded = generate(client, endpoint, truncate_prompt_tokens=-1)
    assert unbounded.prompt_tokens == generate(client, endpoint).prompt_tokens


def test_prompt_logprobs_in_vllm_shape(client: openai.OpenAI) -> None:
    prompt = "To be, or not"
    echo = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=0, echo=True, logprobs=2
    )
    legacy = echo.choices[0].logprobs
    assert legacy is not None and legacy.token_logprobs is not None
    response = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=1, extra_body={"prompt_logprobs": 2}
    )
    entries = response.choices[0].prompt_logprobs  # type: ignore[attr-defined]
    assert len(entries) == len(prompt) and entries[0] is None
    for index, entry in enumerate(entries[1:], start=1):
        own = entry[str(ord(prompt[index]))]
        assert own["logprob"] == pytest.approx(legacy.token_logprobs[index], abs=1e-5)
        assert own["decoded_token"] == prompt[index] and own["rank"] >= 1
        ranked = sorted(entry.values(), key=lambda e: e["rank"])
        assert [e["rank"] for e in ranked][:2] == [1, 2]
        assert ranked[0]["logprob"] >= ranked[1]["logprob"]
        assert (own["rank"] == 1) == (own["logprob"] == ranked[0]["logprob"])
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=1,
        extra_body={"prompt_logprobs": 0},
    )
    chat_entries = chat.prompt_logprobs  # type: ignore[attr-defined]
    assert chat_entries[0] is None and len(chat_entries) == chat.usage.prompt_tokens  # type: ignore[union-attr]
    assert all(len(entry) == 1 for entry in chat_entries[1:])  # k=0: the prompt token only


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_prompt_logprobs_refused_when_streaming(client: openai.OpenAI, endpoint: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        if endpoint == "completions":
            client.completions.create(
                model=MODEL, prompt="x", stream=True, extra_body={"prompt_logprobs": 1}
            )
        else:
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "x"}],
                stream=True,
                extra_body={"prompt_logprobs": 1},
            )
    assert caught.value.body["param"] == "prompt_logprobs"  # type: ignore[index]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_continuous_usage_stats_put_usage_on_every_chunk(
    client: openai.OpenAI, endpoint: str
) -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    common: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 24,
        "stream": True,
        # one letter per token, so the text so far tells how many tokens a chunk follows
        "extra_body": {"stream_options": options, "allowed_token_ids": LETTERS},
    }
    if endpoint == "completions":
        stream: Any = client.completions.create(prompt="Hello", **common)
    else:
        stream = client.chat.completions.create(
            messages=[{"role": "user", "content": "Hello"}], **common
        )
    chunks = list(stream)
    assert chunks and all(chunk.usage is not None for chunk in chunks)
    text = ""
    for chunk in chunks[:-1]:
        (choice,) = chunk.choices
        text += (choice.text if endpoint == "completions" else choice.delta.content) or ""
        assert chunk.usage.completion_tokens == len(text)
        assert chunk.usage.total_tokens == chunk.usage.prompt_tokens + len(text)
    assert len(text) == 24
    final = chunks[-1]
    assert final.choices == [] and final.usage.completion_tokens == 24  # still sent last
    assert len({chunk.usage.prompt_tokens for chunk in chunks}) == 1


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"no_such_field": 1}, "no_such_field"),
        ({"min_tokens": 40}, "min_tokens"),
        ({"stop_token_ids": [256]}, "stop_token_ids.0"),
        ({"allowed_token_ids": []}, "allowed_token_ids"),
        ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
        ({"stream_options": {"continuous_usage_stats": True, "bogus": 1}}, None),
    ],
)
def test_bad_extensions_are_400(
    client: openai.OpenAI, endpoint: str, extra: dict[str, Any], param: str | None
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        generate(client, endpoint, **extra)
    body: Any = caught.value.body
    assert body["type"] == "invalid_request_error" and body["code"]
    if param is not None:
        assert param in (body["param"] or "")
