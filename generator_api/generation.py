"""One generation request as the API layer sees it: several prompts, one engine stream each.

`open_scheduler` finds (loading on first use, in a thread) the model's scheduler and maps the
engine's errors onto the platform's; `Generation.submit` queues every prompt or none (a full
queue aborts what was already queued and answers 503 with Retry-After), so all validation is
over before a response starts. Used as an async context manager a generation is aborted on
exit unless it finished, so a client that goes away frees its slots.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import torch
from starlette.requests import HTTPConnection

from core.engine import EngineOverloaded, GenerationStream, ModelNotFoundError, Scheduler
from core.engine.checkpoint import CheckpointError
from core.engine.language_model import PREFILL_CHUNK, LanguageModel
from core.engine.registry import InvalidModelNameError
from core.engine.sampling import SamplingParams
from core.engine.sequence import CompletionOutput, TokenLogprob
from core.engine.stream import AbortsOnExit, StreamEvent
from core.engine_protocol import ModelEngine, require_engine
from core.errors import InvalidRequest, NotFound, NotReady, Overloaded, PlatformError

logger = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.25


def model_not_found(name: str, detail: str | None = None) -> NotFound:
    # OpenAI answers an unknown model with type invalid_request_error, code model_not_found.
    return NotFound(
        detail or f"The model {name!r} does not exist",
        code="model_not_found",
        param="model",
        type="invalid_request_error",
    )


def open_scheduler_sync(engine: ModelEngine | None, model: str) -> Scheduler:
    """The model's scheduler (blocking: may load the model); platform errors for failures."""
    try:
        scheduler = require_engine(engine).scheduler(model)
    except (ModelNotFoundError, InvalidModelNameError) as exc:
        raise model_not_found(model, str(exc)) from exc
    except CheckpointError as exc:
        logger.error("model %s cannot be loaded: %s", model, exc)
        raise PlatformError(f"model {model!r} cannot be loaded", code="model_load_failed") from exc
    except RuntimeError as exc:  # the engine is shutting down
        raise NotReady(str(exc), code="engine_unavailable") from exc
    return scheduler


async def open_scheduler(engine: ModelEngine | None, model: str) -> Scheduler:
    """`open_scheduler_sync` in a worker thread, unless the model's scheduler already runs:
    then it is a dictionary lookup, done here (a thread hop per request costs milliseconds
    of time to first token when the engine keeps the cores busy)."""
    if engine is not None:
        try:
            scheduler = engine.started_scheduler(model)
        except RuntimeError as exc:  # the engine is shutting down
            raise NotReady(str(exc), code="engine_unavailable") from exc
        if scheduler is not None:
            return scheduler
    return await asyncio.to_thread(open_scheduler_sync, engine, model)


def submit_one(
    scheduler: Scheduler,
    prompt_ids: list[int],
    params: SamplingParams,
    *,
    request_id: str,
    prompt_index: int,
) -> GenerationStream:
    """Queue one prompt; EngineOverloaded becomes 503 + Retry-After, a bad prompt 400."""
    try:
        return scheduler.submit(
            prompt_ids, params, request_id=request_id, prompt_index=prompt_index
        )
    except EngineOverloaded as exc:
        raise Overloaded(str(exc), retry_after=exc.retry_after) from exc
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="prompt") from exc
    except RuntimeError as exc:  # the scheduler stopped (model re-created or shutdown)
        raise NotReady(str(exc), code="engine_unavailable") from exc


class Generation(AbortsOnExit):
    """Every prompt of one request, submitted together, read as one merged event stream."""

    def __init__(self, streams: Sequence[GenerationStream]) -> None:
        self.streams = list(streams)

    @classmethod
    def submit(
        cls,
        scheduler: Scheduler,
        prompts: Sequence[list[int]],
        params: SamplingParams,
        *,
        request_id: str,
    ) -> Generation:
        """Queue all prompts (no I/O, never blocks): all of them, or none."""
        streams: list[GenerationStream] = []
        try:
            for index, ids in enumerate(prompts):
                streams.append(
                    submit_one(
                        scheduler,
                        ids,
                        params,
                        request_id=f"{request_id}-{index}",
                        prompt_index=index,
                    )
                )
        except BaseException:
            for stream in streams:
                stream.abort()
            raise
        return cls(streams)

    @property
    def finished(self) -> bool:
        return all(stream.finished for stream in self.streams)

    def abort(self) -> None:
        for stream in self.streams:
            stream.abort()

    async def events(self) -> AsyncIterator[tuple[int, StreamEvent]]:
        """(prompt_index, event) as the engine produces them, prompts interleaved."""
        if len(self.streams) == 1:
            async for only in self.streams[0]:
                yield 0, only
            return
        queue: asyncio.Queue[tuple[int, StreamEvent | None, BaseException | None]]
        queue = asyncio.Queue()
        tasks = [
            asyncio.create_task(_pump(index, stream, queue))
            for index, stream in enumerate(self.streams)
        ]
        try:
            remaining = len(tasks)
            while remaining:
                index, item, error = await queue.get()
                if error is not None:
                    raise error
                if item is None:
                    remaining -= 1
                    continue
                yield index, item
        finally:
            for task in tasks:
                task.cancel()

    def outputs(self) -> list[CompletionOutput]:
        """Every choice of every prompt, ordered by (prompt_index, index); once finished."""
        return [output for stream in self.streams for output in stream.outputs()]

    async def collect(self, connection: HTTPConnection | None = None) -> list[CompletionOutput]:
        """Wait for every output; with a `connection`, abort if its client goes away."""
        watcher = (
            asyncio.create_task(abort_on_disconnect(connection, self))
            if connection is not None and hasattr(connection, "is_disconnected")
            else None
        )
        try:
            for stream in self.streams:
                await stream.collect()
        finally:
            if watcher is not None:
                watcher.cancel()
        return self.outputs()


async def _pump(
    index: int,
    stream: GenerationStream,
    queue: asyncio.Queue[tuple[int, StreamEvent | None, BaseException | None]],
) -> None:
    try:
        async for event in stream:
            queue.put_nowait((index, event, None))
        queue.put_nowait((index, None, None))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        queue.put_nowait((index, None, exc))


async def abort_on_disconnect(connection: Any, generation: Generation) -> None:
    """Poll the HTTP connection; abort the generation when the client has gone."""
    while not generation.finished:
        if await connection.is_disconnected():
            logger.info("client disconnected: aborting its generation")
            generation.abort()
            return
        await asyncio.sleep(DISCONNECT_POLL_S)


@torch.inference_mode()
def prompt_logprobs_sync(lm: LanguageModel, ids: list[int], k: int) -> list[TokenLogprob | None]:
    """Logprob of every prompt token given the ones before it (None for the first), with the
    top `k` alternatives: what echo + logprobs returns. Blocking torch work: call in a thread.

    A chunked recurrent prefill keeps memory linear in the prompt length.
    """
    tokens = torch.tensor([ids], device=lm.device)  # (1, T)
    logits, _ = lm.model.prefill(tokens, chunk_size=PREFILL_CHUNK, all_logits=True)  # (1, T, V)
    logprobs = torch.log_softmax(logits[0, :-1].float(), dim=-1).cpu()  # (T-1, V)
    chosen_t = logprobs.gather(1, tokens[0, 1:].cpu().view(-1, 1))  # (T-1, 1)
    ranks = ((logprobs > chosen_t).sum(dim=-1) + 1).tolist()  # (T-1,) 1 = most likely
    chosen = chosen_t.view(-1).tolist()
    if k > 0:
        values, order = torch.sort(logprobs, dim=-1, descending=True, stable=True)
        top_values, top_ids = values[:, :k].tolist(), order[:, :k].tolist()
    else:
        top_values = top_ids = [[] for _ in chosen]
    result: list[TokenLogprob | None] = [None]
    for token, logprob, rank, alt_ids, alt_values in zip(
        ids[1:], chosen, ranks, top_ids, top_values, strict=True
    ):
        top = list(zip(alt_ids, alt_values, strict=True))
        result.append(TokenLogprob(token, logprob, top, rank=rank))
    return result
