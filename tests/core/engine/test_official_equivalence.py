"""Our weights load into the official module structure, and generate the same tokens."""

from __future__ import annotations

import torch

from core.engine import SamplingParams, load_model
from core.engine.checkpoint import official_state_dict
from core.engine.language_model import LanguageModel

from .conftest import nano_model
from .official_reference import ReferenceBDH


def _reference_for(lm: LanguageModel) -> ReferenceBDH:
    c = lm.config
    ref = ReferenceBDH(c.n_layer, c.n_embd, c.n_head, c.mlp_internal_dim_multiplier, c.vocab_size)
    ref.load_state_dict(official_state_dict(lm.model), strict=True)
    return ref.eval()


def _check_greedy_matches(lm: LanguageModel, prompt: str, new_tokens: int) -> None:
    ref = _reference_for(lm)
    ids = torch.tensor([list(prompt.encode())])
    expected = ref.greedy(ids, new_tokens)[0, ids.size(1) :].tolist()
    outputs = lm.complete([prompt], SamplingParams(max_tokens=new_tokens, temperature=0.0))
    assert outputs[0].token_ids == expected
    with torch.no_grad():
        ours, _ = lm.model(ids)
        theirs = ref(ids)
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_nano_matches_the_official_module() -> None:
    _check_greedy_matches(LanguageModel("nano", nano_model(scale=5.0)), "To be or not", 60)


def test_shipped_model_matches_the_official_module() -> None:
    lm = load_model("bdh-shakespeare")
    _check_greedy_matches(lm, "ROMEO:\n", 48)
