"""The async `openai` client: concurrency, seeds under load, streaming."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import openai
import pytest

from tests.support.server import LiveServer

from .conftest import MODEL


@pytest.fixture
async def aclient(server: LiveServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{server.url}/v1", api_key="x", max_retries=0
    ) as client:
        yield client


async def test_same_seed_gives_the_same_text_under_concurrent_load(
    aclient: openai.AsyncOpenAI,
) -> None:
    async def sample(prompt: str, seed: int) -> str:
        completion = await aclient.completions.create(
            model=MODEL, prompt=prompt, max_tokens=20, temperature=1.0, top_p=0.9, seed=seed
        )
        return completion.choices[0].text

    alone = await sample("Seeded", 1234)
    # The seeded requests share batches with each other and with unrelated traffic.
    texts = await asyncio.gather(
        *(sample("Seeded", 1234) for _ in range(5)),
        *(sample(f"other {i}", i) for i in range(5)),
    )
    assert texts[:5] == [alone] * 5
    assert len(set(texts[5:])) > 1  # unrelated prompts and seeds do not all collapse


async def test_concurrent_streams_each_get_their_own_text(aclient: openai.AsyncOpenAI) -> None:
    async def stream(prompt: str) -> tuple[str, str]:
        chunks = await aclient.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=16,
            temperature=0,
            stream=True,
        )
        text = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
        whole = await aclient.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=16,
            temperature=0,
        )
        return text, whole.choices[0].message.content or ""

    pairs = await asyncio.gather(*(stream(f"question {i}") for i in range(4)))
    for streamed, whole in pairs:
        assert streamed == whole


async def test_async_errors(aclient: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await aclient.completions.create(model="missing", prompt="x")
    with pytest.raises(openai.BadRequestError) as caught:
        await aclient.completions.create(model=MODEL, prompt="x", n=99, stream=True)
    assert caught.value.param == "n"
