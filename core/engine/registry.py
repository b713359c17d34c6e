"""The model registry: models addressed by name, loaded once, shared by everything.

A model is a directory `<models_dir>/<name>/` in the native checkpoint format. Names are
validated and resolved inside the models directory; a name that resolves elsewhere (through a
symlink, say) is refused, so an API caller can never make the server read an arbitrary path.
"""

from __future__ import annotations

import builtins
import logging
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .checkpoint import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, load_checkpoint, read_config
from .language_model import LanguageModel
from .model import BDH, BDHConfig

if TYPE_CHECKING:
    from core.config import Settings
    from core.engine_protocol import ModelEngine

logger = logging.getLogger(__name__)

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ModelNotFoundError(LookupError):
    """No model of that name in the registry."""


class InvalidModelNameError(ValueError):
    """A model name that is not a plain registry name (paths, traversal, odd characters)."""


@dataclass
class ModelInfo:
    name: str
    config: BDHConfig
    metadata: dict[str, Any] = field(default_factory=dict)
    size_bytes: int = 0
    loaded: bool = False

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "parameters": self.config.parameter_count(),
            "size_bytes": self.size_bytes,
            "loaded": self.loaded,
            "config": self.config.to_dict(),
            "description": self.metadata.get("description", ""),
            "created_at": self.metadata.get("created_at"),
        }


def validate_model_name(name: str) -> str:
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name) or ".." in name:
        raise InvalidModelNameError(
            f"invalid model name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    try:
        return table[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(table)}") from None


def model_exists(models_dir: str | Path, name: str) -> bool:
    """Whether ``models_dir`` holds a complete model ``name`` (no loading, no device)."""
    return ModelRegistry(models_dir, device="cpu").exists(name)


class ModelRegistry:
    """Thread-safe: loads each model at most once per (device, dtype)."""

    def __init__(
        self, models_dir: str | Path, device: str = "auto", dtype: str | torch.dtype = "float32"
    ) -> None:
        self.models_dir = Path(models_dir)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self._loaded: dict[tuple[str, str, str], LanguageModel] = {}
        self._lock = threading.RLock()

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRegistry:
        """The registry of `settings.model` (its directory, device and dtype)."""
        model = settings.model
        return cls(model.models_dir, device=model.device, dtype=model.dtype)

    @classmethod
    def of(cls, settings: Settings, engine: ModelEngine | None) -> ModelRegistry:
        """The engine's registry (the models it serves load once), else one from `settings`
        (a process without an engine, such as a Ray worker)."""
        return cls.from_settings(settings) if engine is None else engine.registry

    def path_of(self, name: str) -> Path:
        """The model's directory, guaranteed to lie inside the models directory."""
        validate_model_name(name)
        root = self.models_dir.resolve()
        candidate = self.models_dir / name
        resolved = candidate.resolve()
        if resolved.parent != root or candidate.is_symlink():
            raise InvalidModelNameError(f"model {name!r} resolves outside the models directory")
        return resolved

    def file_of(self, name: str, filename: str) -> Path:
        """One file of a model, guaranteed to be a regular file inside its directory.

        A symlinked file is refused like a symlinked directory: a model directory that is
        real but links its weights elsewhere would make the server read (and serve, and
        hand out through the files routes) whatever the link points at.
        """
        directory = self.path_of(name)
        candidate = directory / filename
        if candidate.is_symlink() or candidate.resolve().parent != directory:
            raise InvalidModelNameError(
                f"model {name!r}: {filename} resolves outside the models directory"
            )
        return candidate

    def exists(self, name: str) -> bool:
        try:
            files = [self.file_of(name, filename) for filename in (CONFIG_FILE, WEIGHTS_FILE)]
        except InvalidModelNameError:
            return False
        return all(path.is_file() for path in files)

    def names(self) -> list[str]:
        if not self.models_dir.is_dir():
            return []
        return sorted(p.name for p in self.models_dir.iterdir() if self.exists(p.name))

    def info(self, name: str) -> ModelInfo:
        path = self._existing(name)
        config, metadata = read_config(path)
        return ModelInfo(
            name=name,
            config=config,
            metadata=metadata,
            size_bytes=(path / WEIGHTS_FILE).stat().st_size,
            loaded=any(key[0] == name for key in self._loaded),
        )

    def list(self) -> builtins.list[ModelInfo]:
        infos = []
        for name in self.names():
            try:
                infos.append(self.info(name))
            except CheckpointError as exc:
                logger.warning("skipping model %s: %s", name, exc)
        return infos

    def load(
        self,
        name: str,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> LanguageModel:
        dev = resolve_device(device) if isinstance(device, str) else (device or self.device)
        dt = resolve_dtype(dtype) if dtype is not None else self.dtype
        key = (name, str(dev), str(dt))
        with self._lock:
            if key not in self._loaded:
                path = self._existing(name)
                model, metadata = load_checkpoint(path, device=dev, dtype=dt)
                self._loaded[key] = LanguageModel(name, model, metadata)
                logger.info("loaded model %s on %s (%s)", name, dev, dt)
            return self._loaded[key]

    def loaded_names(self) -> builtins.list[str]:
        with self._lock:
            return sorted({key[0] for key in self._loaded})

    def register(self, name: str, model: BDH, metadata: dict[str, Any]) -> Path:
        """Save a new model under `name` (replacing any of that name) and forget cached copies."""
        from .checkpoint import save_checkpoint

        path = self.path_of(name)
        with self._lock:
            staging = path.with_name(f".{name}.staging")
            shutil.rmtree(staging, ignore_errors=True)
            save_checkpoint(model, staging, metadata)
            if path.exists():
                shutil.rmtree(path)
            staging.replace(path)
            for key in [k for k in self._loaded if k[0] == name]:
                del self._loaded[key]
        return path

    def _existing(self, name: str) -> Path:
        path = self.path_of(name)
        if not self.exists(name):
            known = ", ".join(self.names()) or "none"
            raise ModelNotFoundError(f"model {name!r} not found (available: {known})")
        return path
