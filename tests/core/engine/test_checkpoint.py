"""Native checkpoints round-trip; official-format files import; the registry stays inside."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from core.engine import ModelRegistry, SamplingParams
from core.engine.checkpoint import (
    CheckpointError,
    import_official,
    load_checkpoint,
    official_state_dict,
    save_checkpoint,
)
from core.engine.registry import InvalidModelNameError, ModelNotFoundError

from .conftest import nano_model


def test_native_round_trip_is_bit_exact(tmp_path: Path) -> None:
    model = nano_model(scale=3.0)
    save_checkpoint(model, tmp_path / "m", {"description": "round trip"})
    loaded, metadata = load_checkpoint(tmp_path / "m")
    assert metadata == {"description": "round trip"}
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_import_official_strips_prefixes_and_drops_extras(tmp_path: Path) -> None:
    model = nano_model(scale=3.0)
    official = {f"_orig_mod.{k}": v for k, v in official_state_dict(model).items()}
    assert "_orig_mod.lm_gate" in official and "_orig_mod.attn.freqs" in official
    path = tmp_path / "official.pt"
    torch.save({"model": official, "optimizer": {}, "step": 500}, path)
    imported, metadata = import_official(path, n_layer=model.config.n_layer)
    assert imported.config == model.config.__class__(
        **{**model.config.to_dict(), "dropout": imported.config.dropout}
    )
    assert metadata["training"] == {"steps": 500}
    idx = torch.randint(0, 256, (1, 20))
    assert torch.equal(imported(idx)[0], model(idx)[0])


def test_import_a_bare_state_dict(tmp_path: Path) -> None:
    model = nano_model()
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    imported, _ = import_official(tmp_path / "bare.pt", n_layer=2)
    assert imported.config.n_head == 2 and imported.config.neurons_per_head == 128


def test_import_refuses_pickled_code_and_wrong_shapes(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("echo pwned",))

    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights-only"):
        import_official(tmp_path / "evil.pt", n_layer=2)
    torch.save({"model": {"encoder": torch.zeros(2, 3)}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="lacks"):
        import_official(tmp_path / "bad.pt", n_layer=2)


def test_registry_loads_by_name_once_and_generates(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    registry.register("nano-a", nano_model(), {"description": "a"})
    assert registry.names() == ["nano-a"]
    lm = registry.load("nano-a")
    assert registry.load("nano-a") is lm
    assert len(lm.generate("hi", SamplingParams(max_tokens=4, temperature=0.0))) > 0
    with pytest.raises(ModelNotFoundError, match="nano-a"):
        registry.load("missing")


@pytest.mark.parametrize(
    "name", ["../etc", "a/b", "/abs", "..", ".hidden", "", "x" * 65, "a\\b", "ok\n"]
)
def test_registry_refuses_names_that_are_paths(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidModelNameError):
        ModelRegistry(tmp_path).load(name)


def test_registry_refuses_symlinks_out_of_the_models_dir(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    save_checkpoint(nano_model(), outside / "secret")
    models = tmp_path / "models"
    models.mkdir()
    (models / "escape").symlink_to(outside / "secret", target_is_directory=True)
    registry = ModelRegistry(models)
    assert registry.names() == []
    with pytest.raises(InvalidModelNameError, match="outside"):
        registry.load("escape")
