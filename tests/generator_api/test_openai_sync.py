"""The OpenAI-compatible API through the real `openai` SDK (sync client) and raw SSE."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from .conftest import LIMITS, MODEL

GREEDY: dict[str, Any] = {"model": MODEL, "temperature": 0, "max_tokens": 24}


def sse_messages(response: httpx.Response) -> list[str]:
    """The data fields of an SSE response, in order."""
    lines = response.read().decode().split("\n\n")
    assert lines[-1] == "", "the stream must end with a blank line"
    data = []
    for message in lines[:-1]:
        assert message.startswith("data: "), message
        data.append(message.removeprefix("data: "))
    return data


def test_completion_response_shape_and_exact_usage(client: openai.OpenAI) -> None:
    prompt = "Hello, wörld"
    completion = client.completions.create(prompt=prompt, **GREEDY)
    assert completion.id.startswith("cmpl-") and completion.object == "text_completion"
    assert completion.model == MODEL and completion.system_fingerprint
    assert isinstance(completion.created, int)
    [choice] = completion.choices
    assert choice.index == 0 and choice.finish_reason == "length" and choice.logprobs is None
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == len(prompt.encode())  # a token is a byte
    assert usage.completion_tokens == GREEDY["max_tokens"]
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streamed_completion_equals_the_whole_one(client: openai.OpenAI) -> None:
    whole = client.completions.create(prompt="Once upon", **GREEDY)
    stream = client.completions.create(
        prompt="Once upon", stream=True, stream_options={"include_usage": True}, **GREEDY
    )
    chunks = list(stream)
    *content, usage_chunk = chunks
    assert "".join(c.choices[0].text for c in content) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in content][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in content[:-1])
    assert usage_chunk.choices == [] and usage_chunk.usage == whole.usage
    assert len({c.id for c in chunks}) == 1


def test_streamed_chat_equals_the_whole_one(client: openai.OpenAI) -> None:
    messages: Any = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]
    whole = client.chat.completions.create(messages=messages, **GREEDY)
    assert whole.id.startswith("chatcmpl-") and whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(messages=messages, stream=True, **GREEDY))
    first = chunks[0].choices[0]
    assert first.delta.role == "assistant" and first.delta.content == ""
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage is None  # not asked for


def test_sse_framing_is_exactly_openais(http: httpx.Client) -> None:
    body = {
        **GREEDY,
        "messages": [{"role": "user", "content": "Hi"}],
        "n": 2,
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        data = sse_messages(response)
    assert data.count("[DONE]") == 1 and data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    *content, usage = chunks
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 12
    assert all(c["object"] == "chat.completion.chunk" and "usage" in c for c in content)
    for index in (0, 1):
        mine = [c["choices"][0] for c in content if c["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert all("role" not in c["delta"] for c in mine[1:])
        assert mine[-1]["finish_reason"] == "length"
        assert all(c["finish_reason"] is None for c in mine[:-1])


def test_n_choices_and_several_prompts(client: openai.OpenAI) -> None:
    sampled = client.completions.create(
        model=MODEL, prompt="abc", n=3, max_tokens=8, temperature=1.0, seed=5
    )
    assert sorted(c.index for c in sampled.choices) == [0, 1, 2]
    assert sampled.usage is not None and sampled.usage.completion_tokens == 24
    assert sampled.usage.prompt_tokens == 3  # the prompt is counted once, not per choice

    several = client.completions.create(prompt=["ab", "xyz"], n=2, **GREEDY)
    texts = [c.text for c in sorted(several.choices, key=lambda c: c.index)]
    alone = [client.completions.create(prompt=p, **GREEDY).choices[0].text for p in ("ab", "xyz")]
    assert texts == [alone[0], alone[0], alone[1], alone[1]]  # prompt-major numbering
    assert several.usage is not None and several.usage.prompt_tokens == 5


def test_token_id_prompts_and_echo(client: openai.OpenAI) -> None:
    text = client.completions.create(prompt="Hi!", **GREEDY).choices[0].text
    by_ids = client.completions.create(prompt=list(b"Hi!"), **GREEDY).choices[0].text
    assert by_ids == text
    echoed = client.completions.create(prompt="Hi!", echo=True, **GREEDY).choices[0].text
    assert echoed == "Hi!" + text
    only = client.completions.create(model=MODEL, prompt="Hi!", echo=True, max_tokens=0)
    assert only.choices[0].text == "Hi!" and only.usage is not None
    assert only.usage.completion_tokens == 0


def test_stop_strings_never_appear(client: openai.OpenAI) -> None:
    free = client.completions.create(prompt="The", **GREEDY).choices[0].text
    stop = free[6:8]
    expected = free[: free.index(stop)]
    cut = client.completions.create(prompt="The", stop=[stop, "\x00never"], **GREEDY)
    assert cut.choices[0].text == expected and cut.choices[0].finish_reason == "stop"
    assert cut.usage is not None and cut.usage.completion_tokens < GREEDY["max_tokens"]

    chunks = list(client.completions.create(prompt="The", stop=stop, stream=True, **GREEDY))
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"

    messages: Any = [{"role": "user", "content": "The"}]
    chat_free = client.chat.completions.create(messages=messages, **GREEDY)
    content = chat_free.choices[0].message.content or ""
    chat_stop = content[5:7]
    chat_chunks = client.chat.completions.create(
        messages=messages, stop=chat_stop, stream=True, **GREEDY
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chat_chunks if c.choices)
    assert streamed == content[: content.index(chat_stop)]


def test_completion_logprobs_have_the_legacy_shape(client: openai.OpenAI) -> None:
    completion = client.completions.create(prompt="abc", logprobs=3, **GREEDY)
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and completion.usage is not None
    count = completion.usage.completion_tokens
    assert logprobs.tokens and logprobs.token_logprobs and logprobs.top_logprobs
    assert logprobs.text_offset is not None
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == count
    assert len(logprobs.top_logprobs) == len(logprobs.text_offset) == count
    for token, logprob, top in zip(
        logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True
    ):
        assert logprob is not None and logprob <= 0
        assert 3 <= len(top) <= 4 and top[token] == logprob
        assert logprob == max(top.values())  # greedy picks the most likely byte
    assert logprobs.text_offset == sorted(logprobs.text_offset)

    echoed = client.completions.create(prompt="abc", logprobs=1, echo=True, **GREEDY)
    echo_logprobs = echoed.choices[0].logprobs
    assert echo_logprobs is not None and echo_logprobs.token_logprobs is not None
    assert echo_logprobs.tokens[:3] == ["a", "b", "c"]  # type: ignore[index]
    assert echo_logprobs.token_logprobs[0] is None and echo_logprobs.token_logprobs[1] is not None
    assert echo_logprobs.token_logprobs[3:] == logprobs.token_logprobs


def test_chat_logprobs_have_the_chat_shape(client: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "x"}]
    chat = client.chat.completions.create(
        messages=messages, logprobs=True, top_logprobs=2, **GREEDY
    )
    logprobs = chat.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None and chat.usage is not None
    assert len(logprobs.content) == chat.usage.completion_tokens
    for entry in logprobs.content:
        assert entry.bytes is not None and len(entry.bytes) == 1 and entry.logprob <= 0
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob

    streamed = client.chat.completions.create(
        messages=messages, logprobs=True, top_logprobs=1, stream=True, **GREEDY
    )
    entries = [
        e
        for c in streamed
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content or []
    ]
    assert [e.token for e in entries] == [e.token for e in logprobs.content]


@pytest.mark.parametrize(
    ("overrides", "param", "code"),
    [
        ({"max_tokens": LIMITS["generation.max_tokens_limit"] + 1}, "max_tokens", "invalid_value"),
        ({"n": LIMITS["generation.max_n"] + 1}, "n", "invalid_value"),
        ({"prompt": "x" * 513}, "prompt", "context_length_exceeded"),
        ({"prompt": ""}, "prompt", "invalid_value"),
        ({"prompt": [1, 300]}, "prompt", "invalid_value"),
        ({"temperature": 3}, "temperature", "invalid_request"),
        ({"logprobs": 6}, "logprobs", "invalid_request"),
        ({"logit_bias": {"300": 5}}, "logit_bias", "invalid_value"),
        ({"logit_bias": {"A": 5}}, "logit_bias", "invalid_value"),
        ({"logit_bias": {"65": 101}}, "logit_bias", "invalid_value"),
        ({"suffix": "end"}, "suffix", "unsupported_parameter"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
        ({"bogus": 1}, "bogus", "invalid_request"),
    ],
)
def test_bad_completion_requests_are_400s(
    http: httpx.Client, overrides: dict[str, Any], param: str, code: str
) -> None:
    response = http.post("/v1/completions", json={"model": MODEL, "prompt": "x", **overrides})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param and error["code"] == code and error["message"]


def test_errors_surface_as_sdk_exceptions_before_any_stream(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model=MODEL, prompt="x", max_tokens=10**6, stream=True)
    assert bad.value.code == "invalid_value" and bad.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as unsupported:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], top_logprobs=2
        )
    assert unsupported.value.param == "top_logprobs"
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="no-such-model", prompt="x")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="../etc", messages=[{"role": "user", "content": "x"}], stream=True
        )
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_logit_bias_steers_completions_and_chat(client: openai.OpenAI) -> None:
    forced = client.completions.create(
        model=MODEL, prompt="x", max_tokens=12, temperature=1.0, logit_bias={"65": 100}
    )
    assert forced.choices[0].text == "A" * 12
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=8,
        temperature=0,
        logit_bias={"66": 100},
    )
    assert chat.choices[0].message.content == "B" * 8

    # a ban: greedy text never contains the banned byte
    def greedy_tokens(**extra: Any) -> list[str]:
        choice = client.completions.create(**GREEDY, prompt="the ", logprobs=0, **extra).choices[0]
        assert choice.logprobs is not None and choice.logprobs.tokens
        return choice.logprobs.tokens  # "A", or "bytes:\\xNN" for other bytes

    plain = greedy_tokens()
    favourite = max(set(plain), key=plain.count)  # the byte greedy decoding likes most
    byte = int(favourite[-2:], 16) if favourite.startswith("bytes:") else ord(favourite)
    assert favourite not in greedy_tokens(logit_bias={str(byte): -100})


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert MODEL in models
    card = client.models.retrieve(MODEL)
    assert card.id == MODEL and card.owned_by == "hatchery" and card.object == "model"
    extra = card.model_extra or {}
    assert extra["root"] == MODEL
    assert extra["max_model_len"] == 512 + LIMITS["generation.max_tokens_limit"]


def test_tokenize_and_detokenize(http: httpx.Client) -> None:
    tokens = http.post("/tokenize", json={"model": MODEL, "prompt": "héllo"}).json()
    assert tokens["tokens"] == list("héllo".encode()) and tokens["count"] == 6
    assert tokens["max_model_len"] > 0
    back = http.post("/detokenize", json={"model": MODEL, "tokens": tokens["tokens"]})
    assert back.json() == {"prompt": "héllo"}

    chat = http.post(
        "/tokenize", json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
    )
    assert bytes(chat.json()["tokens"]).decode() == "User: Hi\nAssistant:"

    for path, body in (
        ("/detokenize", {"model": MODEL, "tokens": [256]}),
        ("/tokenize", {"model": MODEL}),
        ("/tokenize", {"model": MODEL, "prompt": "x", "messages": []}),
    ):
        response = http.post(path, json=body)
        assert response.status_code == 400, response.text
    missing = http.post("/tokenize", json={"model": "nope", "prompt": "x"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
