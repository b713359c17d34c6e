"""The shipped model, `bdh-shakespeare`, served through the OpenAI API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import SHIPPED_MODEL


@pytest.fixture
def shipped(models_dir: Path) -> str:
    assert (models_dir / SHIPPED_MODEL / "model.safetensors").is_file()
    return SHIPPED_MODEL


def test_shipped_model_is_listed_and_writes_text(client: openai.OpenAI, shipped: str) -> None:
    assert shipped in {m.id for m in client.models.list()}
    completion = client.completions.create(
        model=shipped, prompt="ROMEO:\n", max_tokens=120, temperature=0
    )
    text = completion.choices[0].text
    assert completion.usage is not None and completion.usage.completion_tokens == 120
    # A model trained on plays writes mostly letters, spaces and punctuation, in words.
    printable = sum(c.isprintable() or c == "\n" for c in text) / len(text)
    assert printable > 0.95 and len(text.split()) >= 10


def test_shipped_model_chats_and_streams(client: openai.OpenAI, shipped: str) -> None:
    messages: Any = [{"role": "user", "content": "Speak, friend."}]
    options: Any = {"model": shipped, "messages": messages, "max_tokens": 40, "temperature": 0}
    whole = client.chat.completions.create(**options)
    chunks = client.chat.completions.create(**options, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
