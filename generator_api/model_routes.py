"""The generator's models, for people and for the other servers.

GET /api/generator/models                      every model: size, template, metrics, ...
GET /api/generator/models/{name}/files         its manifest: each file's name, size, sha256
GET /api/generator/models/{name}/files/{file}  the file's bytes (config.json, model.safetensors)

A test or benchmark server without a shared models directory fetches a model it lacks through
the last two (``core.engine.model_files``). Auth applies as on every route. Digests are
computed off the event loop and remembered while a file stays unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from core.api.deps import EngineDep, SettingsDep
from core.engine.checkpoint import CheckpointError
from core.engine.model_files import MODEL_FILES, manifest
from core.engine.registry import (
    MODEL_NAME,
    InvalidModelNameError,
    ModelInfo,
    ModelNotFoundError,
    ModelRegistry,
)
from core.errors import ErrorResponse, InvalidRequest, NotFound

from .routes import COMPONENT

ModelName = Annotated[str, Path(pattern=MODEL_NAME.pattern, max_length=64)]


class ModelPublic(BaseModel):
    name: str
    description: str = ""
    template: str | None = None
    parameters: int
    size_bytes: int
    state_bytes_per_sequence: int = Field(
        description="Recurrent state one sequence holds while it generates (float32)."
    )
    loaded: bool
    created_at: str | None = None
    evaluation: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    config: dict[str, Any]


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int


class ModelFile(BaseModel):
    name: str
    size: int
    sha256: str


class ModelManifest(BaseModel):
    model: str
    files: list[ModelFile]


def _public(info: ModelInfo) -> ModelPublic:
    config, metadata = info.config, info.metadata
    training = metadata.get("training")
    return ModelPublic(
        name=info.name,
        description=metadata.get("description", ""),
        template=metadata.get("template"),
        parameters=config.parameter_count(),
        size_bytes=info.size_bytes,
        state_bytes_per_sequence=4 * config.state_numel(),
        loaded=info.loaded,
        created_at=metadata.get("created_at"),
        evaluation=metadata.get("evaluation"),
        training={k: v for k, v in training.items() if k != "command"} if training else None,
        config=config.to_dict(),
    )


@contextlib.contextmanager
def _registry_errors() -> Iterator[None]:
    """The registry's errors about a model name as the API's: 422 or 404 ``model_not_found``."""
    try:
        yield
    except InvalidModelNameError as exc:
        raise InvalidRequest(str(exc), code="invalid_model_name", param="name") from None
    except (ModelNotFoundError, CheckpointError, FileNotFoundError) as exc:
        raise NotFound(str(exc), code="model_not_found", param="name") from None


def _manifest(registry: ModelRegistry, name: str) -> ModelManifest:
    with _registry_errors():
        files = manifest(registry, name)
    return ModelManifest(
        model=name, files=[ModelFile(name=f.name, size=f.size, sha256=f.sha256) for f in files]
    )


def _complete(registry: ModelRegistry, name: str) -> None:
    """404 unless the model is complete (without hashing its files, as the manifest does)."""
    with _registry_errors():
        registry.info(name)


def build_model_files_router() -> APIRouter:
    router = APIRouter(
        prefix=f"/api/{COMPONENT}/models",
        tags=[COMPONENT],
        responses={code: {"model": ErrorResponse} for code in (401, 404, 422)},
    )

    @router.get("", operation_id="generator_models")
    async def list_models(settings: SettingsDep, engine: EngineDep) -> ModelsPublic:
        """Every model in this server's models directory (new ones appear without a restart)."""
        infos = await run_in_threadpool(lambda: ModelRegistry.of(settings, engine).list())
        data = [_public(info) for info in infos]
        return ModelsPublic(data=data, count=len(data))

    @router.get("/{name}/files", operation_id="generator_model_files")
    async def model_files(
        name: ModelName, settings: SettingsDep, engine: EngineDep
    ) -> ModelManifest:
        """The model's files with sizes and sha256 digests, to fetch and check them."""
        return await run_in_threadpool(_manifest, ModelRegistry.of(settings, engine), name)

    @router.get(
        "/{name}/files/{file}",
        operation_id="generator_model_file",
        response_class=FileResponse,
        responses={200: {"content": {"application/octet-stream": {}}}},
    )
    async def model_file(
        name: ModelName, file: str, settings: SettingsDep, engine: EngineDep
    ) -> FileResponse:
        """One file of the model (only the files its manifest lists)."""
        if file not in MODEL_FILES:
            raise NotFound(
                f"a model has only the files {', '.join(MODEL_FILES)}",
                code="model_file_not_found",
                param="file",
            )
        registry = ModelRegistry.of(settings, engine)
        await run_in_threadpool(_complete, registry, name)
        return FileResponse(
            registry.path_of(name) / file, media_type="application/octet-stream", filename=file
        )

    return router
