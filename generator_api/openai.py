"""OpenAI-compatible routes — routing only; the work is in `openai_serving`.

    POST /v1/completions        POST /v1/chat/completions   (JSON, or SSE with "stream": true)
    GET  /v1/models             GET  /v1/models/{model}
    POST /tokenize              POST /detokenize            GET /tokenizer_info
    GET  /version               GET|POST /ping              (vLLM's and SageMaker's probes)

Errors use OpenAI's body ``{"error": {message, type, param, code}}``; bad input is a 400 (the
core error handler answers validation errors on these paths with 400, as OpenAI does).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response, StreamingResponse

from core.api.deps import get_engine, get_settings
from core.errors import ErrorResponse

from .openai_chunks import Prepared
from .openai_protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfo,
    VersionResponse,
)
from .openai_serving import OpenAIServing

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 429, 503)
}
_STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {}},
        "description": "JSON, or Server-Sent Events when the request sets stream: true",
    }
}


def get_serving(connection: HTTPConnection) -> OpenAIServing:
    """The app's serving object, made on first use from its settings and engine."""
    state = connection.app.state
    engine = get_engine(connection)
    serving: OpenAIServing | None = getattr(state, "openai_serving", None)
    if serving is None or serving.engine is not engine:
        serving = OpenAIServing(get_settings(connection), engine)
        state.openai_serving = serving
    return serving


ServingDep = Annotated[OpenAIServing, Depends(get_serving)]


async def _answer(
    prepared: Prepared, stream: bool, serving: OpenAIServing, request: Request
) -> Any:
    if stream:
        return StreamingResponse(
            serving.stream(prepared), media_type="text/event-stream", headers=SSE_HEADERS
        )
    return await serving.respond(prepared, request)


def build_openai_router() -> APIRouter:
    router = APIRouter(tags=["openai"], responses=_ERRORS)

    @router.post(
        "/v1/completions",
        operation_id="create_completion",
        response_model=CompletionResponse,
        responses=_STREAM_DOC,
    )
    async def create_completion(
        body: CompletionRequest, request: Request, serving: ServingDep
    ) -> Any:
        prepared = await serving.prepare_completion(body)
        return await _answer(prepared, body.stream, serving, request)

    @router.post(
        "/v1/chat/completions",
        operation_id="create_chat_completion",
        response_model=ChatCompletionResponse,
        responses=_STREAM_DOC,
    )
    async def create_chat_completion(
        body: ChatCompletionRequest, request: Request, serving: ServingDep
    ) -> Any:
        prepared = await serving.prepare_chat(body)
        return await _answer(prepared, body.stream, serving, request)

    @router.get("/v1/models", operation_id="list_models")
    async def list_models(serving: ServingDep) -> ModelList:
        return await serving.list_models()

    @router.get("/v1/models/{model}", operation_id="retrieve_model")
    async def retrieve_model(
        model: Annotated[str, Path(max_length=255)], serving: ServingDep
    ) -> ModelCard:
        return await serving.get_model(model)

    @router.post("/tokenize", operation_id="tokenize")
    async def tokenize(body: TokenizeRequest, serving: ServingDep) -> TokenizeResponse:
        return await serving.tokenize(body)

    @router.post("/detokenize", operation_id="detokenize")
    async def detokenize(body: DetokenizeRequest, serving: ServingDep) -> DetokenizeResponse:
        return await serving.detokenize(body)

    @router.get("/tokenizer_info", operation_id="tokenizer_info")
    async def tokenizer_info(
        serving: ServingDep, model: Annotated[str | None, Query(max_length=255)] = None
    ) -> TokenizerInfo:
        return await serving.tokenizer_info(model)

    @router.get("/version", operation_id="version")
    async def version(request: Request) -> VersionResponse:
        return VersionResponse(version=request.app.version)

    async def ping() -> Response:
        """Liveness as SageMaker and vLLM probe it: 200 and an empty body."""
        return Response(status_code=200)

    # One route per method: an operation id must be unique.
    for method, operation_id in (("GET", "ping"), ("POST", "ping_post")):
        router.add_api_route(
            "/ping",
            ping,
            methods=[method],
            operation_id=operation_id,
            response_class=Response,
            responses={200: {"description": "Alive (an empty body)", "content": {}}},
        )

    return router
