"""Checkpoints: the native format (config.json + model.safetensors) and official imports.

Native layout of `models/<name>/`:
    config.json         {"model": BDHConfig fields, "metadata": {...}}
    model.safetensors   the official parameter names, nothing else

Official-format files are `torch.save`d dicts (`{"model": state_dict, ...}` or a bare
state_dict). They are read with `weights_only=True`; `_orig_mod.` prefixes (torch.compile)
are stripped, `lm_gate` (unused by the computation) and any `freqs` buffer are dropped, and
the sizes are inferred from the shapes. n_layer cannot be inferred (the weights are shared by
every layer), so the caller gives it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .model import BDH, BDHConfig

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
PARAMETER_NAMES = ("embed.weight", "encoder", "encoder_v", "decoder", "lm_head")
_DROPPED_KEYS = ("lm_gate",)


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or does not fit the BDH architecture."""


def save_checkpoint(
    model: BDH, directory: str | Path, metadata: dict[str, Any] | None = None
) -> Path:
    """Write `directory/config.json` and `directory/model.safetensors` (atomically each)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    document = {
        "format_version": FORMAT_VERSION,
        "architecture": "bdh",
        "model": model.config.to_dict(),
        "metadata": metadata or {},
    }
    _atomic_write(directory / WEIGHTS_FILE, lambda path: save_file(tensors, str(path)))
    _atomic_write(
        directory / CONFIG_FILE,
        lambda path: path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n"),
    )
    return directory


def read_config(directory: str | Path) -> tuple[BDHConfig, dict[str, Any]]:
    """Read only config.json: (model config, metadata)."""
    path = Path(directory) / CONFIG_FILE
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("model"), dict):
        raise CheckpointError(f"{path} has no 'model' section")
    try:
        config = BDHConfig.from_dict(document["model"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid model config: {exc}") from exc
    return config, dict(document.get("metadata") or {})


def load_checkpoint(
    directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[BDH, dict[str, Any]]:
    """Load a native checkpoint: (model in eval mode, metadata)."""
    config, metadata = read_config(directory)
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} does not exist")
    state_dict = load_file(str(weights), device="cpu")
    model = BDH(config)
    _load_exact(model, state_dict, source=str(weights))
    model = model.to(device=device, dtype=dtype) if dtype else model.to(device)
    return model.eval(), metadata


def import_official(path: str | Path, n_layer: int) -> tuple[BDH, dict[str, Any]]:
    """Read an official-format `torch.save` file into a BDH model (float32, CPU)."""
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path} does not exist") from exc
    except Exception as exc:  # unpickling refused or corrupt file
        raise CheckpointError(f"cannot read {path} as a weights-only torch file: {exc}") from exc
    state_dict = payload.get("model", payload) if isinstance(payload, dict) else None
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path} holds no state dict")
    state_dict = clean_official_state_dict(state_dict)
    config = infer_config(state_dict, n_layer=n_layer)
    model = BDH(config)
    _load_exact(model, state_dict, source=str(path))
    metadata: dict[str, Any] = {"imported_from": Path(path).name}
    if isinstance(payload, dict) and isinstance(payload.get("step"), int):
        metadata["training"] = {"steps": payload["step"]}
    return model.eval(), metadata


def clean_official_state_dict(state_dict: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Strip `_orig_mod.` prefixes and drop `lm_gate` and RoPE `freqs` buffers."""
    cleaned: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name = key.replace("_orig_mod.", "")
        if name in _DROPPED_KEYS or name.split(".")[-1] == "freqs":
            continue
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"state dict entry {key!r} is not a tensor")
        cleaned[name] = value
    return cleaned


def infer_config(state_dict: dict[str, torch.Tensor], n_layer: int) -> BDHConfig:
    """nh, D, N from `encoder` (nh, D, N); V from `embed.weight` (V, D)."""
    missing = [name for name in PARAMETER_NAMES if name not in state_dict]
    if missing:
        raise CheckpointError(f"state dict lacks {', '.join(missing)}")
    encoder, embed = state_dict["encoder"], state_dict["embed.weight"]
    if encoder.dim() != 3 or embed.dim() != 2:
        raise CheckpointError("encoder must be (nh, D, N) and embed.weight (V, D)")
    nh, D, N = encoder.shape
    V = embed.shape[0]
    if (N * nh) % D:
        raise CheckpointError(f"nh*N ({nh * N}) is not a multiple of D ({D})")
    try:
        return BDHConfig(
            n_layer=n_layer,
            n_embd=D,
            n_head=nh,
            mlp_internal_dim_multiplier=N * nh // D,
            vocab_size=V,
        )
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc


def official_state_dict(model: BDH) -> dict[str, torch.Tensor]:
    """Our weights under the official module's keys: adds its `attn.freqs` and `lm_gate`.

    `lm_gate` is a parameter the official module declares but never uses; zeros keep the
    computation unchanged.
    """
    out = {k: v.detach().clone() for k, v in model.state_dict().items()}
    N = model.config.neurons_per_head
    out["attn.freqs"] = model.freqs.detach().clone().view(1, 1, 1, N)
    out["lm_gate"] = torch.zeros((model.config.n_embd, 1), dtype=model.lm_head.dtype)
    return out


def _load_exact(model: BDH, state_dict: dict[str, torch.Tensor], source: str) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    if set(expected) != set(got):
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        raise CheckpointError(f"{source}: missing keys {missing}, unexpected keys {extra}")
    for key, shape in expected.items():
        if got[key] != shape:
            raise CheckpointError(f"{source}: {key} has shape {got[key]}, expected {shape}")
    model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)


def _atomic_write(target: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; checkpoints are meant to be shared
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
