"""Pure logic of the generator: chat templates, request conversion, token coalescing, logprobs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.config import load_settings
from core.engine.sequence import TokenLogprob
from core.errors import InvalidRequest, PlatformError
from generator_api.openai_protocol import ChatCompletionRequest, CompletionRequest
from generator_api.openai_render import OffsetTracker, completion_logprobs
from generator_api.schemas import ModelRunRequest, TextRunRequest
from generator_api.service import TokenBuffer
from generator_api.templates import DEFAULT_CHAT_TEMPLATE, model_templates, render_chat

SETTINGS = load_settings()


def test_default_chat_template_renders_turns_and_the_assistant_cue() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    text = render_chat(DEFAULT_CHAT_TEMPLATE, messages)
    assert text == "System: Be brief.\nUser: Hi\nAssistant:"
    assert not render_chat(DEFAULT_CHAT_TEMPLATE, messages, add_generation_prompt=False).endswith(
        "Assistant:"
    )


def test_model_chat_templates_run_in_a_sandbox() -> None:
    custom = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    assert render_chat(custom, [{"role": "user", "content": "x"}]) == "<user>x"
    escape = "{{ messages.__class__.__mro__ }}"
    with pytest.raises(InvalidRequest) as caught:
        render_chat(escape, [{"role": "user", "content": "x"}])
    assert caught.value.code == "invalid_chat_messages"
    mutate = "{% set _ = messages.append(1) %}ok"
    with pytest.raises(InvalidRequest):
        render_chat(mutate, [{"role": "user", "content": "x"}])


def test_template_refusals_are_client_errors_and_broken_templates_server_errors() -> None:
    refuse = "{% if messages[0].role != 'user' %}{{ raise_exception('user first') }}{% endif %}"
    with pytest.raises(InvalidRequest, match="user first"):
        render_chat(refuse, [{"role": "assistant", "content": "x"}])
    with pytest.raises(PlatformError) as caught:
        render_chat("{% for %}", [])
    assert caught.value.status_code == 500 and caught.value.code == "invalid_chat_template"


def test_model_templates_list_every_preset_with_sizes() -> None:
    templates = model_templates()
    names = [t.name for t in templates.data]
    assert {"bdh-nano", "bdh-tiny", "bdh-small", "bdh-official"} <= set(names)
    assert templates.count == len(names)
    sizes = {t.name: t.parameters for t in templates.data}
    assert sizes["bdh-nano"] < sizes["bdh-tiny"] < sizes["bdh-small"] < sizes["bdh-official"]


def test_completion_request_becomes_sampling_params() -> None:
    request = CompletionRequest(model="m", prompt="x", stop="\n", top_k=5, logprobs=2, seed=3)
    params = request.to_sampling_params(SETTINGS, {"temperature": 0.5, "top_k": 9})
    assert params is not None
    assert params.max_tokens == 16  # the legacy API's default
    assert params.stop == ["\n"] and params.logprobs == 2 and params.seed == 3
    assert params.temperature == 0.5  # the model's default fills what the request left out
    assert params.top_k == 5  # ... but never overrides what it gave


def test_echo_without_new_tokens_needs_no_generation() -> None:
    request = CompletionRequest(model="m", prompt="x", echo=True, max_tokens=0)
    assert request.to_sampling_params(SETTINGS) is None
    with pytest.raises(InvalidRequest, match="echo"):
        CompletionRequest(model="m", prompt="x", max_tokens=0).to_sampling_params(SETTINGS)


def test_chat_request_limits_and_logprobs() -> None:
    request = ChatCompletionRequest(
        model="m",
        messages=[{"role": "user", "content": "x"}],
        max_tokens=5,
        max_completion_tokens=7,
        logprobs=True,
        top_logprobs=3,
    )
    params = request.to_sampling_params(SETTINGS)
    assert params.max_tokens == 7 and params.logprobs == 3
    no_top = request.model_copy(update={"logprobs": False})
    with pytest.raises(InvalidRequest) as caught:
        no_top.to_sampling_params(SETTINGS)
    assert caught.value.param == "top_logprobs"
    over = request.model_copy(update={"max_completion_tokens": 10**6})
    with pytest.raises(InvalidRequest) as caught:
        over.to_sampling_params(SETTINGS)
    assert caught.value.param == "max_completion_tokens"


@pytest.mark.parametrize(
    ("update", "param"),
    [
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_unsupported_chat_fields_are_named(update: dict[str, object], param: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], **update}
    with pytest.raises(InvalidRequest) as caught:
        ChatCompletionRequest.model_validate(body).to_sampling_params(SETTINGS)
    assert caught.value.code == "unsupported_parameter" and caught.value.param == param


def test_run_requests_refuse_text_the_store_cannot_keep() -> None:
    with pytest.raises(ValidationError):
        TextRunRequest(prompts=["a\x00b"])
    with pytest.raises(ValidationError):
        TextRunRequest(prompts=["a"], stop=["\x00"])
    with pytest.raises(ValidationError):
        ModelRunRequest(name="m", text="a\x00b")
    buffer = TokenBuffer()
    buffer.add(0, 0, "a\x00b", None)  # a model may well generate byte 0
    assert buffer.drain()[0][1]["text"] == "a\ufffdb"


def test_token_buffer_merges_per_choice_and_keeps_everything() -> None:
    buffer = TokenBuffer()
    pieces = [(0, 0, "ab"), (0, 1, "x"), (0, 0, "c"), (1, 0, "q"), (0, 1, "y")]
    for prompt_index, choice, text in pieces:
        buffer.add(prompt_index, choice, text, None)
    buffer.add(0, 0, "", "length")
    buffer.add(0, 1, "", None)  # nothing to say: no event
    events = buffer.drain()
    assert {(d["prompt_index"], d["choice"]): d["text"] for _, d in events} == {
        (0, 0): "abc",
        (0, 1): "xy",
        (1, 0): "q",
    }
    assert [d.get("finish_reason") for _, d in events] == ["length", None, None]
    assert all(kind == "token" for kind, _ in events)
    assert buffer.drain() == []


def test_text_offsets_point_at_character_starts() -> None:
    tokens = list("aé€b".encode())  # 1 + 2 + 3 + 1 bytes
    entries = [TokenLogprob(t, -1.0, [(t, -1.0), (0, -2.0)]) for t in tokens]
    logprobs = completion_logprobs(entries, tokens, OffsetTracker())
    assert logprobs.text_offset == [0, 1, 1, 2, 2, 2, 3]
    assert logprobs.tokens[0] == "a" and logprobs.tokens[1] == "bytes:\\xc3"
    assert all(len(top or {}) == 2 for top in logprobs.top_logprobs)


def test_top_logprobs_always_include_the_chosen_token() -> None:
    entry = TokenLogprob(ord("z"), -5.0, [(ord("a"), -0.1)])
    logprobs = completion_logprobs([entry, None], [ord("z"), ord("y")], OffsetTracker())
    assert logprobs.top_logprobs[0] == {"a": -0.1, "z": -5.0}
    assert logprobs.token_logprobs == [-5.0, None] and logprobs.top_logprobs[1] is None


def test_the_readme_names_every_accepted_field() -> None:
    from pathlib import Path

    from generator_api.openai_protocol import StreamOptions

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for model in (CompletionRequest, ChatCompletionRequest):
        for name in model.model_fields:
            assert f"`{name}`" in readme, f"{model.__name__}.{name} is not in the README"
    for name in StreamOptions.model_fields:
        assert f"`stream_options.{name}`" in readme
