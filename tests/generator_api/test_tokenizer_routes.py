"""vLLM's tokenizer routes and probes, as lm-eval's remote tokenizer and SageMaker call them."""

from __future__ import annotations

import httpx

from generator_api.templates import DEFAULT_CHAT_TEMPLATE

from .conftest import MODEL


def test_tokenize_without_a_model_uses_the_default(http: httpx.Client) -> None:
    # What lm-eval's RemoteTokenizer sends: no model, add_special_tokens false.
    response = http.post("/tokenize", json={"prompt": "héllo", "add_special_tokens": False})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tokens"] == list("héllo".encode())
    assert body["count"] == 6 and body["max_model_len"] > 0
    assert body.get("token_strs") is None


def test_tokenize_returns_token_strings_on_request(http: httpx.Client) -> None:
    body = http.post(
        "/tokenize", json={"model": MODEL, "prompt": "aé", "return_token_strs": True}
    ).json()
    assert body["token_strs"] == ["a", "bytes:\\xc3", "bytes:\\xa9"]


def test_tokenize_messages_applies_the_chat_template(http: httpx.Client) -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hel"}]
    rendered = http.post(
        "/tokenize", json={"messages": messages, "add_generation_prompt": False}
    ).json()
    text = bytes(rendered["tokens"]).decode()
    assert "Hi" in text and "Hel" in text
    continued = http.post(
        "/tokenize",
        json={"messages": messages, "add_generation_prompt": False, "continue_final_message": True},
    ).json()
    assert bytes(continued["tokens"]).decode().endswith("Hel")
    both = http.post(
        "/tokenize",
        json={"messages": messages, "add_generation_prompt": True, "continue_final_message": True},
    )
    assert both.status_code == 400 and both.json()["error"]["param"] == "continue_final_message"


def test_detokenize_without_a_model(http: httpx.Client) -> None:
    response = http.post("/detokenize", json={"tokens": list("héllo".encode())})
    assert response.status_code == 200 and response.json() == {"prompt": "héllo"}
    bad = http.post("/detokenize", json={"tokens": [256]})
    assert bad.status_code == 400 and bad.json()["error"]["param"].startswith("tokens")
    unknown = http.post("/detokenize", json={"model": "no-such-model", "tokens": [65]})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


def test_tokenizer_info_as_vllm_serves_it(http: httpx.Client) -> None:
    response = http.get("/tokenizer_info")
    assert response.status_code == 200
    info = response.json()
    assert info["tokenizer_class"] == "ByteTokenizer" and info["vocab_size"] == 256
    assert "eos_token" in info and info["eos_token"] is None  # bytes have no special tokens
    assert info["chat_template"] == DEFAULT_CHAT_TEMPLATE
    assert (
        info["model_max_length"]
        == http.post("/tokenize", json={"prompt": ""}).json()["max_model_len"]
    )
    assert http.get("/tokenizer_info", params={"model": "nope"}).status_code == 404


def test_version_and_ping(http: httpx.Client) -> None:
    version = http.get("/version")
    assert (
        version.status_code == 200
        and version.json()["version"] == http.get("/info").json()["version"]
    )
    for method in ("GET", "POST"):
        ping = http.request(method, "/ping")
        assert ping.status_code == 200 and ping.content == b""
