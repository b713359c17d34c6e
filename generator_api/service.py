"""Generator jobs: ``text`` (batch generation) and ``model`` (create and train a model).

Both are plain functions of (RunContext, request) -> result, run by the executor in a worker
thread. `generate_text` drives the engine's scheduler from a private event loop in that thread
(`asyncio.run`): prompts go in a few at a time (never more than the engine can seat, retrying
when its queue is full), token events are coalesced for ~50 ms and written in one transaction
(`emit_many`), never dropped, and a cancelled run aborts its streams within ~0.1 s.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Any

from core.engine import GenerationStream, Scheduler
from core.engine.corpus import Corpus, CorpusError, load_corpus, text_corpus
from core.engine.creation import create_model
from core.engine.sampling import SamplingParams
from core.engine.sequence import CompletionOutput
from core.engine.stream import GenerationError
from core.engine.training import (
    TrainingConfig,
    TrainingStopped,
    TrainingUpdate,
    get_template,
    training_schedule,
)
from core.engine_protocol import require_engine
from core.errors import InvalidRequest, Overloaded, PlatformError
from core.runs.context import RunContext

from .generation import open_scheduler_sync, submit_one
from .schemas import (
    ModelRunRequest,
    ModelRunResult,
    TextCompletion,
    TextRunRequest,
    TextRunResult,
    TrainingMetrics,
    Usage,
    model_exists_error,
    storable,
)

logger = logging.getLogger(__name__)

TOKEN_FLUSH_S = 0.05
CANCEL_POLL_S = 0.1
MAX_OVERLOAD_WAIT_S = 5.0


# Text runs ------------------------------------------------------------------------------------


def generate_text(context: RunContext, request: TextRunRequest) -> TextRunResult:
    settings = context.settings
    params = request.to_sampling_params(settings)
    model = request.model_name(settings)
    context.progress(0.0, f"loading {model}")
    scheduler = open_scheduler_sync(context.engine, model)
    if params.n > scheduler.max_batch:
        raise InvalidRequest(f"n={params.n} exceeds the engine's batch size", param="n")
    prompts = [list(prompt.encode("utf-8")) for prompt in request.prompts]
    context.progress(0.0, f"generating for {len(prompts)} prompt(s) with {model}")
    batch = _TextBatch(context, scheduler, prompts, params)
    outputs = asyncio.run(batch.execute())
    result = text_result(model, prompts, outputs)
    if batch.stopped:
        context.save_partial_result(result)
        context.check_cancelled()
    return result


def text_result(
    model: str, prompts: list[list[int]], outputs: list[CompletionOutput]
) -> TextRunResult:
    completions = [
        TextCompletion(
            prompt_index=o.prompt_index,
            index=o.index,
            text=storable(o.text),
            finish_reason=o.finish_reason,
            usage=_usage(o.prompt_tokens, o.completion_tokens),
        )
        for o in outputs
    ]
    prompt_tokens = sum(len(prompts[i]) for i in {o.prompt_index for o in outputs})
    completion_tokens = sum(o.completion_tokens for o in outputs)
    return TextRunResult(
        model=model, completions=completions, usage=_usage(prompt_tokens, completion_tokens)
    )


def _usage(prompt: int, completion: int) -> Usage:
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


class TokenBuffer:
    """Token events waiting to be written: text of the same choice merges, nothing is lost
    (but U+0000, which the PostgreSQL store cannot keep, is stored as U+FFFD)."""

    def __init__(self) -> None:
        self._pending: dict[tuple[int, int], dict[str, Any]] = {}

    def add(self, prompt_index: int, choice: int, text: str, finish_reason: str | None) -> None:
        if not text and finish_reason is None:
            return
        key = (prompt_index, choice)
        event = self._pending.get(key)
        if event is None:
            event = {"prompt_index": prompt_index, "choice": choice, "text": ""}
            self._pending[key] = event
        event["text"] += storable(text)
        if finish_reason is not None:
            event["finish_reason"] = finish_reason

    def drain(self) -> list[tuple[str, dict[str, Any]]]:
        events = [("token", event) for event in self._pending.values()]
        self._pending = {}
        return events


class _TextBatch:
    """The prompts of one text run, streamed through the scheduler on a private loop."""

    def __init__(
        self,
        context: RunContext,
        scheduler: Scheduler,
        prompts: list[list[int]],
        params: SamplingParams,
    ) -> None:
        self.context = context
        self.scheduler = scheduler
        self.prompts = prompts
        self.params = params
        self.tokens = TokenBuffer()
        self.streams: dict[int, GenerationStream] = {}
        self.outputs: dict[int, list[CompletionOutput]] = {}
        self.stopped = False
        self.error: BaseException | None = None

    async def execute(self) -> list[CompletionOutput]:
        # Never ask for more seats than the engine has: the rest wait here, not in its queue.
        seats = asyncio.Semaphore(max(1, self.scheduler.max_batch // self.params.n))
        background = [
            asyncio.create_task(self._flush_periodically()),
            asyncio.create_task(self._watch_cancel()),
        ]
        try:
            await asyncio.gather(*(self._generate(i, seats) for i in range(len(self.prompts))))
        finally:
            for task in background:
                task.cancel()
            self._abort_all()
            self._flush()
        if self.error is not None:
            raise self.error
        return [o for index in sorted(self.outputs) for o in self.outputs[index]]

    async def _generate(self, index: int, seats: asyncio.Semaphore) -> None:
        async with seats:
            stream = await self._submit(index)
            if stream is None:
                return
            try:
                async with stream:
                    async for event in stream:
                        self.tokens.add(index, event.choice, event.text, event.finish_reason)
                self.outputs[index] = stream.outputs()
            except GenerationError as exc:
                raise PlatformError(f"generation failed: {exc}", code="generation_failed") from exc
            self._progress()

    async def _submit(self, index: int) -> GenerationStream | None:
        while not self.stopped:
            try:
                stream = submit_one(
                    self.scheduler,
                    self.prompts[index],
                    self.params,
                    request_id=f"{self.context.run_id}-{index}",
                    prompt_index=index,
                )
            except Overloaded as exc:  # other clients fill the queue: wait our turn
                await asyncio.sleep(min(exc.retry_after or 1.0, MAX_OVERLOAD_WAIT_S))
                continue
            self.streams[index] = stream
            return stream
        return None

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(TOKEN_FLUSH_S)
            self._flush()

    def _flush(self) -> None:
        events = self.tokens.drain()
        if not events or self.error is not None:
            return
        try:
            self.context.emit_many(events)
        except Exception as exc:  # the run was lost (RunCancelled) or the store failed
            self.error = exc
            self._stop()

    async def _watch_cancel(self) -> None:
        while not self.context.cancelled:
            await asyncio.sleep(CANCEL_POLL_S)
        self._stop()

    def _stop(self) -> None:
        self.stopped = True
        self._abort_all()

    def _abort_all(self) -> None:
        for stream in self.streams.values():
            stream.abort()

    def _progress(self) -> None:
        done, total = len(self.outputs), len(self.prompts)
        try:
            self.context.progress(done / total, f"{done}/{total} prompts done")
        except Exception as exc:
            self.error = self.error or exc
            self._stop()


# Model runs -----------------------------------------------------------------------------------


def create_model_job(context: RunContext, request: ModelRunRequest) -> ModelRunResult:
    engine = require_engine(context.engine)
    registry = engine.registry
    if registry.exists(request.name) and not request.overwrite:
        raise model_exists_error(request.name)
    corpus = _load_corpus(context, request)
    training = training_config(request)
    state_dir = Path(context.settings.data_dir) / "training" / context.run_id
    context.progress(0.0, f"building {request.template}" + (" and training" if corpus else ""))
    try:
        created = create_model(
            registry,
            name=request.name,
            template=request.template,
            corpus=corpus,
            training=training,
            dropout=request.dropout,
            description=request.description,
            command=f"generator model run {context.run_id}",
            state_dir=state_dir if corpus is not None else None,
            on_update=_MetricReporter(context).update,
            should_stop=lambda: context.cancelled,
        )
    except TrainingStopped:
        context.check_cancelled()
        raise
    except ValueError as exc:  # e.g. a corpus too short for the block size
        raise InvalidRequest(str(exc), code="invalid_training") from exc
    # The old weights may still be loaded under this name: the next request loads the new ones.
    engine.forget(request.name)
    shutil.rmtree(state_dir, ignore_errors=True)
    context.progress(1.0, f"registered {request.name}")
    return _model_result(request, created.parameters, created.size_bytes, created.metadata, corpus)


def training_config(request: ModelRunRequest) -> TrainingConfig:
    return training_schedule(
        request.steps,
        learning_rate=request.learning_rate,
        eval_every=request.eval_every,
        warmup_steps=request.warmup_steps,
        batch_size=request.batch_size,
        block_size=request.block_size,
        validation_fraction=request.validation_fraction,
        eval_batches=request.eval_batches,
        seed=request.seed,
    )


def _load_corpus(context: RunContext, request: ModelRunRequest) -> Corpus | None:
    if request.steps == 0:
        return None
    if request.text is not None:
        return text_corpus(request.text, name="inline")
    assert request.corpus is not None  # the request validator guarantees one of them
    context.progress(0.0, f"loading corpus {request.corpus}")
    try:
        return load_corpus(request.corpus, context.settings.data_dir)
    except CorpusError as exc:
        raise InvalidRequest(str(exc), param="corpus", code="corpus_unavailable") from exc


class _MetricReporter:
    """Training updates -> ``metric`` events (one transaction per update) and progress."""

    UNITS = {
        "loss": "nats",
        "tokens_per_s": "tokens/s",
        "learning_rate": "",
        "val_bits_per_byte": "bits/byte",
    }

    def __init__(self, context: RunContext) -> None:
        self.context = context

    def update(self, update: TrainingUpdate) -> None:
        values = {
            "loss": update.loss,
            "tokens_per_s": update.tokens_per_s,
            "learning_rate": update.learning_rate,
            "val_bits_per_byte": update.val_bits_per_byte,
        }
        events = [
            (
                "metric",
                {"name": name, "value": value, "step": update.step, "unit": self.UNITS[name]},
            )
            for name, value in values.items()
            if value is not None
        ]
        self.context.emit_many(events)
        message = f"step {update.step}/{update.steps}: loss {update.loss:.3f}"
        self.context.progress(update.step / update.steps, message)


def _model_result(
    request: ModelRunRequest,
    parameters: int,
    size_bytes: int,
    metadata: dict[str, Any],
    corpus: Corpus | None,
) -> ModelRunResult:
    training = metadata.get("training") or None
    evaluation = metadata.get("evaluation") or {}
    metrics = None
    if training is not None:
        metrics = TrainingMetrics(
            steps=training["steps"],
            final_loss=training["final_loss"],
            val_bits_per_byte=evaluation["val_bits_per_byte"],
            train_bits_per_byte=evaluation["train_bits_per_byte"],
            tokens_seen=training["tokens_seen"],
            seconds=training["seconds"],
        )
    config = get_template(request.template).config.to_dict()
    if request.dropout is not None:
        config["dropout"] = request.dropout
    return ModelRunResult(
        name=request.name,
        template=request.template,
        parameters=parameters,
        size_bytes=size_bytes,
        config=config,
        corpus=corpus.name if corpus is not None else None,
        corpus_bytes=len(corpus.data) if corpus is not None else None,
        metrics=metrics,
    )
