"""Serving logic behind the OpenAI-compatible routes (no routing here: see `openai.py`).

A request goes through `prepare_completion` / `prepare_chat`, which do *all* validation —
limits, model lookup (404), prompt size (400 ``context_length_exceeded``), chat template —
and queue the prompts in the engine (503 + Retry-After when full). Only then does a response
start: `respond` waits for the whole result, `stream` yields SSE messages. Both abort the
generation when the client goes away.

``max_model_len`` is reported as ``generation.max_prompt_bytes + generation.max_tokens_limit``:
BDH's recurrent state has no context limit of its own, so the server's hard limits on prompt
and output length are what bounds a request.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from starlette.requests import HTTPConnection

from core.config import Settings
from core.engine import ModelNotFoundError, Scheduler
from core.engine.registry import InvalidModelNameError, ModelInfo, ModelRegistry
from core.engine.sampling import SamplingParams
from core.engine.sequence import CompletionOutput, TokenLogprob
from core.engine.stream import GenerationError
from core.engine_protocol import ModelEngine, require_engine
from core.errors import InvalidRequest, PlatformError

from .generation import (
    Generation,
    model_not_found,
    open_scheduler,
    prompt_logprobs_sync,
)
from .openai_chunks import SYSTEM_FINGERPRINT, ChunkWriter, Prepared, echo_only_outputs
from .openai_protocol import (
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    ChatResponseMessage,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    ModelCard,
    ModelList,
    PromptLogprobs,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfo,
    Usage,
    invalid_value,
)
from .openai_render import (
    DONE,
    OffsetTracker,
    chat_logprobs,
    choice_index,
    completion_logprobs,
    sse,
    token_text,
    usage_of,
    vllm_prompt_logprobs,
)
from .templates import chat_template_of, render_chat

logger = logging.getLogger(__name__)


class OpenAIServing:
    """Built once per app (see `openai.get_serving`): settings and the shared engine."""

    def __init__(self, settings: Settings, engine: ModelEngine | None) -> None:
        self.settings = settings
        self.engine = engine

    @property
    def max_model_len(self) -> int:
        limits = self.settings.generation
        return limits.max_prompt_bytes + limits.max_tokens_limit

    # Models, tokenize, detokenize -------------------------------------------------------------

    async def list_models(self) -> ModelList:
        registry = self._registry()
        infos = await asyncio.to_thread(registry.list)
        cards = await asyncio.to_thread(lambda: [self._card(info) for info in infos])
        return ModelList(data=cards)

    async def get_model(self, name: str) -> ModelCard:
        info = await self._model_info(name)
        return await asyncio.to_thread(self._card, info)

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        info = await self._model_info(request.model or self.settings.model.default)
        if (request.prompt is None) == (request.messages is None):
            raise InvalidRequest("give exactly one of prompt or messages", param="prompt")
        if request.messages is not None:
            text = self._render_chat(
                info.metadata,
                request.messages,
                request.add_generation_prompt,
                continue_final_message=request.continue_final_message,
            )
        else:
            text = request.prompt or ""
        tokens = list(text.encode("utf-8"))
        return TokenizeResponse(
            tokens=tokens,
            count=len(tokens),
            max_model_len=self.max_model_len,
            token_strs=[token_text(t) for t in tokens] if request.return_token_strs else None,
        )

    async def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        await self._model_info(request.model or self.settings.model.default)
        return DetokenizeResponse(prompt=_decode(request.tokens))

    async def tokenizer_info(self, model: str | None) -> TokenizerInfo:
        info = await self._model_info(model or self.settings.model.default)
        return TokenizerInfo(
            model_max_length=self.max_model_len, chat_template=chat_template_of(info.metadata)
        )

    # Preparing requests -----------------------------------------------------------------------

    async def prepare_completion(self, request: CompletionRequest) -> Prepared:
        prompts = [self._prompt_ids(p, "prompt", request) for p in request.prompts()]
        scheduler = await open_scheduler(self.engine, request.model)
        params = request.to_sampling_params(self.settings, _defaults(scheduler))
        prepared = Prepared(
            kind="completion",
            id=f"cmpl-{uuid.uuid4().hex}",
            model=request.model,
            prompts=prompts,
            n=request.n,
            generation=None,
            include_usage=request.include_usage,
            continuous_usage=request.continuous_usage,
            logprobs=request.logprobs,
        )
        if request.prompt_logprobs is not None:
            prepared.vllm_prompt_logprobs = await self._vllm_prompt_logprobs(
                scheduler, prompts, request.prompt_logprobs
            )
        if request.echo:
            prepared.echo_texts = [_decode(ids) for ids in prompts]
            if request.logprobs is not None:
                prepared.prompt_logprobs = await self._prompt_logprobs(
                    scheduler, prompts, request.logprobs
                )
        if params is not None:
            prepared.generation = self._submit(scheduler, prompts, params, prepared.id)
        return prepared

    async def prepare_chat(self, request: ChatCompletionRequest) -> Prepared:
        scheduler = await open_scheduler(self.engine, request.model)
        params = request.to_sampling_params(self.settings, _defaults(scheduler))
        text = self._render_chat(
            scheduler.lm.metadata, request.messages, request.add_generation_prompt
        )
        prompt = self._prompt_ids(text, "messages", request)
        prepared = Prepared(
            kind="chat",
            id=f"chatcmpl-{uuid.uuid4().hex}",
            model=request.model,
            prompts=[prompt],
            n=request.n,
            generation=None,
            include_usage=request.include_usage,
            continuous_usage=request.continuous_usage,
            chat_logprobs=request.logprobs,
        )
        if request.prompt_logprobs is not None:
            prepared.vllm_prompt_logprobs = await self._vllm_prompt_logprobs(
                scheduler, [prompt], request.prompt_logprobs
            )
        prepared.generation = self._submit(scheduler, [prompt], params, prepared.id)
        return prepared

    def _submit(
        self, scheduler: Scheduler, prompts: list[list[int]], params: SamplingParams, rid: str
    ) -> Generation:
        if len(prompts) > scheduler.max_waiting:
            raise InvalidRequest(
                f"{len(prompts)} prompts in one request; this server queues at most "
                f"{scheduler.max_waiting}",
                param="prompt",
                code="invalid_value",
            )
        if params.n > scheduler.max_batch:
            raise InvalidRequest(
                f"n={params.n} exceeds the engine's batch size of {scheduler.max_batch}",
                param="n",
                code="invalid_value",
            )
        return Generation.submit(scheduler, prompts, params, request_id=rid)

    def _prompt_ids(
        self,
        prompt: str | list[int],
        param: str,
        request: CompletionRequest | ChatCompletionRequest,
    ) -> list[int]:
        ids = list(prompt.encode("utf-8")) if isinstance(prompt, str) else list(prompt)
        ids = request.truncate(ids, self.settings)
        if not ids:
            raise InvalidRequest(
                "the prompt must not be empty: BDH needs at least one byte of context",
                param=param,
                code="invalid_value",
            )
        if not isinstance(prompt, str) and any(not 0 <= i <= 255 for i in ids):
            raise InvalidRequest(
                "token ids must be bytes: integers in [0, 255]", param=param, code="invalid_value"
            )
        limit = self.settings.generation.max_prompt_bytes
        if len(ids) > limit:
            raise InvalidRequest(
                f"the prompt is {len(ids)} bytes; this server accepts at most {limit}",
                param=param,
                code="context_length_exceeded",
            )
        return ids

    # Answering --------------------------------------------------------------------------------

    async def respond(
        self, prepared: Prepared, connection: HTTPConnection | None = None
    ) -> CompletionResponse | ChatCompletionResponse:
        """The whole (non-streaming) response; aborts if `connection`'s client goes away."""
        outputs = await self._outputs(prepared, connection)
        if prepared.kind == "chat":
            return self._chat_response(prepared, outputs)
        return self._completion_response(prepared, outputs)

    async def _outputs(
        self, prepared: Prepared, connection: HTTPConnection | None
    ) -> list[CompletionOutput]:
        if prepared.generation is None:
            return echo_only_outputs(prepared)
        async with prepared.generation as generation:
            try:
                return await generation.collect(connection)
            except GenerationError as exc:
                raise PlatformError(f"generation failed: {exc}", code="generation_failed") from exc

    def _completion_response(
        self, prepared: Prepared, outputs: Sequence[CompletionOutput]
    ) -> CompletionResponse:
        choices = []
        for output in outputs:
            text, tokens = output.text, list(output.token_ids)
            entries: list[TokenLogprob | None] = list(output.logprobs or [])
            if prepared.echo_texts is not None:
                text = prepared.echo_texts[output.prompt_index] + text
                tokens = prepared.prompts[output.prompt_index] + tokens
                entries = prepared.prompt_entries(output.prompt_index) + entries
            logprobs = None
            if prepared.logprobs is not None:
                logprobs = completion_logprobs(entries, tokens, OffsetTracker())
            choices.append(
                CompletionChoice(
                    index=choice_index(output.prompt_index, output.index, prepared.n),
                    text=text,
                    logprobs=logprobs,
                    finish_reason=output.finish_reason,
                    prompt_logprobs=prepared.vllm_prompt_logprobs_of(output.prompt_index),
                )
            )
        return CompletionResponse(
            id=prepared.id,
            created=prepared.created,
            model=prepared.model,
            system_fingerprint=SYSTEM_FINGERPRINT,
            choices=sorted(choices, key=lambda c: c.index),
            usage=usage_of([len(p) for p in prepared.prompts], outputs),
        )

    def _chat_response(
        self, prepared: Prepared, outputs: Sequence[CompletionOutput]
    ) -> ChatCompletionResponse:
        choices = [
            ChatChoice(
                index=output.index,
                message=ChatResponseMessage(content=output.text),
                logprobs=chat_logprobs(output.logprobs or []) if prepared.chat_logprobs else None,
                finish_reason=output.finish_reason,
            )
            for output in outputs
        ]
        return ChatCompletionResponse(
            id=prepared.id,
            created=prepared.created,
            model=prepared.model,
            system_fingerprint=SYSTEM_FINGERPRINT,
            choices=choices,
            usage=usage_of([len(p) for p in prepared.prompts], outputs),
            prompt_logprobs=prepared.vllm_prompt_logprobs_of(0),
        )

    # Streaming --------------------------------------------------------------------------------

    async def stream(self, prepared: Prepared) -> AsyncIterator[str]:
        """SSE messages: the chunks, a usage chunk when asked for, then one ``[DONE]``.

        Starlette cancels this generator when the client disconnects; leaving the
        ``async with`` then aborts the generation, which frees its slots within a step.
        """
        chunks = ChunkWriter(prepared)
        try:
            if prepared.generation is None:
                for message in chunks.opening():
                    yield message
                for output in echo_only_outputs(prepared):
                    yield chunks.finish(output.prompt_index, output.index, output.finish_reason)
            else:
                async with prepared.generation as generation:
                    for message in chunks.opening():
                        yield message
                    async for prompt_index, event in generation.events():
                        for message in chunks.event(prompt_index, event):
                            yield message
            if prepared.include_usage:
                yield chunks.usage(self._stream_usage(prepared))
        except GenerationError as exc:
            logger.error("generation %s failed while streaming: %s", prepared.id, exc)
            error = PlatformError(f"generation failed: {exc}", code="generation_failed")
            yield sse(error.to_body())
        yield DONE

    def _stream_usage(self, prepared: Prepared) -> Usage:
        outputs = [] if prepared.generation is None else prepared.generation.outputs()
        return usage_of([len(p) for p in prepared.prompts], outputs)

    # Helpers ----------------------------------------------------------------------------------

    def _registry(self) -> ModelRegistry:
        return require_engine(self.engine).registry

    async def _model_info(self, name: str) -> ModelInfo:
        registry = self._registry()
        try:
            info: ModelInfo = await asyncio.to_thread(registry.info, name)
        except (ModelNotFoundError, InvalidModelNameError) as exc:
            raise model_not_found(name) from exc
        return info

    def _card(self, info: ModelInfo) -> ModelCard:
        return ModelCard(
            id=info.name,
            created=_created(info, self._registry()),
            root=info.name,
            max_model_len=self.max_model_len,
        )

    def _render_chat(
        self,
        metadata: dict[str, Any],
        messages: list[ChatMessage],
        add_generation_prompt: bool,
        *,
        continue_final_message: bool = False,
    ) -> str:
        if continue_final_message and add_generation_prompt:
            raise invalid_value(
                "continue_final_message",
                "continue_final_message and add_generation_prompt cannot both be true",
            )
        dicts = [
            {**message.model_dump(exclude_none=True), "content": message.text(index)}
            for index, message in enumerate(messages)
        ]
        text = render_chat(
            chat_template_of(metadata), dicts, add_generation_prompt=add_generation_prompt
        )
        final = dicts[-1]["content"] if dicts else ""
        if continue_final_message and final and (end := text.rfind(final)) != -1:
            # As vLLM: the prompt ends inside the final message, so the model continues it.
            text = text[: end + len(final)]
        return text

    async def _vllm_prompt_logprobs(
        self, scheduler: Scheduler, prompts: list[list[int]], k: int
    ) -> list[PromptLogprobs]:
        entries = await self._prompt_logprobs(scheduler, prompts, k)
        return [vllm_prompt_logprobs(prompt_entries) for prompt_entries in entries]

    async def _prompt_logprobs(
        self, scheduler: Scheduler, prompts: list[list[int]], k: int
    ) -> list[list[TokenLogprob | None]]:
        return [
            await asyncio.to_thread(prompt_logprobs_sync, scheduler.lm, ids, k) for ids in prompts
        ]


def _defaults(scheduler: Scheduler) -> dict[str, Any]:
    defaults = scheduler.lm.metadata.get("generation_defaults")
    return dict(defaults) if isinstance(defaults, dict) else {}


def _decode(ids: list[int]) -> str:
    return bytes(ids).decode("utf-8", errors="replace")


def _created(info: ModelInfo, registry: Any) -> int:
    """Creation time from the metadata, else the config file's modification time."""
    stamp = info.metadata.get("created_at")
    if isinstance(stamp, str):
        try:
            return int(datetime.fromisoformat(stamp).timestamp())
        except ValueError:
            pass
    try:
        return int((registry.path_of(info.name) / "config.json").stat().st_mtime)
    except (OSError, ValueError):
        return 0
