"""The serving load generator: OpenAI `/v1/completions` requests at set concurrency and rate.

Metrics follow `vllm bench serve`:

- TTFT: from sending a request to its first streamed chunk with choices;
- ITL: every gap between consecutive chunks of a request (all requests pooled);
- TPOT: per request, (E2E - TTFT) / (output tokens - 1), for requests with > 1 token;
- E2E: from sending a request to its last chunk;
- without streaming, TTFT is the whole latency and TPOT and ITL are not measured;
- request throughput and output tokens/s: completed requests and their output tokens over
  the level's wall time.

Output tokens come from the stream's usage chunk (`stream_options.include_usage`), else from
the UTF-8 bytes of the text (BDH's tokens are bytes). Arrivals follow a Poisson process at
`request_rate`; a semaphore caps requests in flight at `concurrency`; a request's clock starts
when it is actually sent. Everything here is asyncio; the job runs it with `asyncio.run` in its
worker thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from benchmark_api.results import LatencyStats, ServingLevel

logger = logging.getLogger(__name__)

POLL_S = 0.05  # how often a running level looks at the stop flag
MAX_ERROR_SAMPLES = 5
_COMMON_WORDS = (
    "the of and to in is was for that with as his on be at by had not are but from or "
    "have an they which one you were her all she there would their we him been has when "
    "who will more no if out so said what up its about into than them can only other new"
)
_WORDS = tuple(_COMMON_WORDS.split())


class LevelStopped(Exception):
    """The stop flag was raised while a level was running; its requests were cancelled."""


class EndpointError(Exception):
    """The endpoint under test could not serve a single request."""


@dataclass(frozen=True)
class LoadSpec:
    """What every request of a benchmark sends."""

    completions_url: str
    model: str
    max_tokens: int
    stream: bool = True
    temperature: float = 1.0
    timeout_s: float = 120.0
    headers: tuple[tuple[str, str], ...] = ()  # e.g. the peer's API key


@dataclass
class RequestOutcome:
    prompt_tokens: int
    ok: bool = False
    streamed: bool = True
    output_tokens: int = 0
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def tpot_s(self) -> float | None:
        if not self.ok or not self.streamed or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


def make_prompts(count: int, size: int, seed: int) -> list[str]:
    """`count` different ASCII prompts of exactly `size` bytes (one byte is one token)."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        words: list[str] = []
        length = 0
        while length <= size:  # the joined text is length - 1 long
            word = rng.choice(_WORDS)
            words.append(word)
            length += len(word) + 1
        prompts.append(" ".join(words)[:size])
    return prompts


def _payload(spec: LoadSpec, prompt: str, seed: int) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": spec.model,
        "prompt": prompt,
        "max_tokens": spec.max_tokens,
        "temperature": spec.temperature,
        "seed": seed,
        "stream": spec.stream,
    }
    if spec.stream:
        payload["stream_options"] = {"include_usage": True}
    return payload


async def send_completion(
    session: aiohttp.ClientSession, spec: LoadSpec, prompt: str, seed: int
) -> RequestOutcome:
    """One request, timed; failures come back as an outcome with `error`, never raised."""
    outcome = RequestOutcome(prompt_tokens=len(prompt.encode()), streamed=spec.stream)
    timeout = aiohttp.ClientTimeout(total=spec.timeout_s)
    started = time.perf_counter()
    try:
        async with session.post(
            spec.completions_url, json=_payload(spec, prompt, seed), timeout=timeout
        ) as response:
            if response.status != 200:
                outcome.error = f"HTTP {response.status}: {_error_message(await response.text())}"
                return outcome
            if spec.stream:
                await _read_stream(response, outcome, started)
            else:
                _read_body(await response.json(), outcome, time.perf_counter() - started)
    except Exception as exc:  # network, timeout or protocol: a failed request, not a failed run
        outcome.error = f"{type(exc).__name__}: {exc}"[:300]
        outcome.ok = False
    return outcome


async def _read_stream(
    response: aiohttp.ClientResponse, outcome: RequestOutcome, started: float
) -> None:
    text: list[str] = []
    usage_tokens: int | None = None
    first: float | None = None
    last = started
    async for raw in response.content:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue  # blank separators and SSE comments
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        chunk = json.loads(data)
        if "error" in chunk:
            outcome.error = f"stream error: {_error_message(json.dumps(chunk))}"
            return
        now = time.perf_counter()
        if chunk.get("choices"):
            if first is None:
                first = now
            else:
                outcome.itl_s.append(now - last)
            last = now
            text.append(chunk["choices"][0].get("text") or "")
        if isinstance(chunk.get("usage"), dict):
            usage_tokens = chunk["usage"].get("completion_tokens", usage_tokens)
            outcome.prompt_tokens = chunk["usage"].get("prompt_tokens", outcome.prompt_tokens)
    if first is None:
        outcome.error = "the stream ended without any completion chunk"
        return
    outcome.ttft_s, outcome.e2e_s = first - started, last - started
    outcome.output_tokens = usage_tokens if usage_tokens is not None else _bytes(text)
    outcome.ok = True


def _read_body(body: dict[str, Any], outcome: RequestOutcome, elapsed: float) -> None:
    choices = body.get("choices") or []
    usage = body.get("usage") or {}
    text = [c.get("text") or "" for c in choices[:1]]
    outcome.output_tokens = usage.get("completion_tokens", _bytes(text))
    outcome.prompt_tokens = usage.get("prompt_tokens", outcome.prompt_tokens)
    outcome.ttft_s = outcome.e2e_s = elapsed  # without streaming the first token is the last
    outcome.ok = True


def _bytes(pieces: Sequence[str]) -> int:
    return len("".join(pieces).encode())


def _error_message(body: str) -> str:
    try:
        error = json.loads(body).get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        message = body
    return str(message or body)[:200]


async def run_level(
    session: aiohttp.ClientSession,
    spec: LoadSpec,
    prompts: Sequence[str],
    *,
    concurrency: int | None,
    request_rate: float | None,
    seed: int,
    should_stop: Callable[[], bool],
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[list[RequestOutcome], float]:
    """Send one request per prompt; returns the outcomes and the level's wall time (s).

    Raises `LevelStopped` (after cancelling what is in flight) once `should_stop()` is true.
    `on_progress(finished, total)` is called each time the level looks at the stop flag.
    """
    rng = random.Random(seed)
    semaphore = asyncio.Semaphore(concurrency) if concurrency else None
    tasks: list[asyncio.Task[RequestOutcome]] = []

    async def limited(index: int) -> RequestOutcome:
        if semaphore is None:
            return await send_completion(session, spec, prompts[index], seed + index)
        async with semaphore:
            return await send_completion(session, spec, prompts[index], seed + index)

    async def arrive() -> None:
        for index in range(len(prompts)):
            if request_rate is not None and index > 0:
                await asyncio.sleep(rng.expovariate(request_rate))
            tasks.append(asyncio.create_task(limited(index)))

    started = time.perf_counter()
    arrivals = asyncio.create_task(arrive())
    while pending := [t for t in (arrivals, *tasks) if not t.done()]:
        if should_stop():
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            raise LevelStopped
        await asyncio.wait(pending, timeout=POLL_S, return_when=asyncio.FIRST_COMPLETED)
        if on_progress is not None:
            on_progress(sum(t.done() for t in tasks), len(prompts))
    await arrivals  # re-raise anything the arrival loop hit
    return [task.result() for task in tasks], time.perf_counter() - started


def latency_stats(samples_s: Sequence[float]) -> LatencyStats:
    """Mean, percentiles (linear interpolation, as numpy and vLLM), min and max, in ms."""
    if not samples_s:
        return LatencyStats()
    ms = np.asarray(samples_s, dtype=np.float64) * 1000
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    return LatencyStats(
        count=len(ms),
        mean=float(ms.mean()),
        p50=p50,
        p90=p90,
        p99=p99,
        min=float(ms.min()),
        max=float(ms.max()),
    )


def summarize_level(
    outcomes: Sequence[RequestOutcome],
    duration_s: float,
    *,
    concurrency: int | None,
    request_rate: float | None,
) -> ServingLevel:
    done = [o for o in outcomes if o.ok]
    failed = [o for o in outcomes if not o.ok]
    input_tokens = sum(o.prompt_tokens for o in done)
    output_tokens = sum(o.output_tokens for o in done)
    span = max(duration_s, 1e-9)
    return ServingLevel(
        concurrency=concurrency,
        request_rate=request_rate,
        num_requests=len(outcomes),
        completed=len(done),
        errors=len(failed),
        duration_s=duration_s,
        request_throughput=len(done) / span,
        output_tokens_per_s=output_tokens / span,
        total_tokens_per_s=(input_tokens + output_tokens) / span,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        ttft_ms=latency_stats([o.ttft_s for o in done]),
        tpot_ms=latency_stats([t for o in done if (t := o.tpot_s) is not None]),
        itl_ms=latency_stats([gap for o in done for gap in o.itl_s]),
        e2e_ms=latency_stats([o.e2e_s for o in done]),
        error_samples=list(dict.fromkeys(o.error or "" for o in failed))[:MAX_ERROR_SAMPLES],
    )


async def probe_endpoint(
    session: aiohttp.ClientSession, spec: LoadSpec, prompt: str, seed: int
) -> None:
    """One request that must succeed: it warms the endpoint (a lazily loaded model) and turns
    an unusable endpoint into one clear `EndpointError` instead of a table of failures."""
    outcome = await send_completion(session, spec, prompt, seed)
    if not outcome.ok:
        raise EndpointError(
            f"the endpoint {spec.completions_url} failed a first request: {outcome.error}"
        )


async def run_levels(
    spec: LoadSpec,
    levels: Sequence[tuple[int | None, float | None]],
    *,
    num_requests: int,
    prompt_bytes: int,
    seed: int,
    should_stop: Callable[[], bool],
    on_level: Callable[[int, ServingLevel], None],
    on_progress: Callable[[int, int], None] | None = None,
    probe: bool = True,
) -> list[ServingLevel]:
    """Every level in turn on one connection pool; `on_level` sees each as it finishes.

    With `probe`, `probe_endpoint` sends one request first.
    """
    prompts = make_prompts(num_requests, prompt_bytes, seed)
    connector = aiohttp.TCPConnector(limit=0)
    results: list[ServingLevel] = []
    async with aiohttp.ClientSession(connector=connector, headers=dict(spec.headers)) as session:
        if probe:
            await probe_endpoint(session, spec, prompts[0], seed)
        for index, (concurrency, rate) in enumerate(levels):
            outcomes, duration = await run_level(
                session,
                spec,
                prompts,
                concurrency=concurrency,
                request_rate=rate,
                seed=seed + 7919 * (index + 1),
                should_stop=should_stop,
                on_progress=on_progress,
            )
            level = summarize_level(outcomes, duration, concurrency=concurrency, request_rate=rate)
            logger.info("serving level %s: %s", index, level.label())
            on_level(index, level)
            results.append(level)
    return results
