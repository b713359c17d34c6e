"""`/v1/models`, `/tokenize`, `/detokenize`, `/tokenizer_info` and `/version`, as vLLM serves them.

`model` is optional on the tokenizer routes (the server's default model), as in vLLM: every
BDH model shares the byte tokenizer, so the model only matters for its chat template.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from core.api.request_model import RequestModel

from .common import _STRICT, ChatMessage, TokenId


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "hatchery"
    root: str
    parent: str | None = None
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeRequest(RequestModel):
    """vLLM's two forms: ``prompt``, or chat ``messages`` rendered with the chat template."""

    model_config = _STRICT
    model: str | None = Field(None, min_length=1, max_length=255)
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = True  # no special tokens in a byte vocabulary: changes nothing
    return_token_strs: bool = False


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(RequestModel):
    model_config = _STRICT
    model: str | None = Field(None, min_length=1, max_length=255)
    tokens: list[TokenId]


class DetokenizeResponse(BaseModel):
    prompt: str


class TokenizerInfo(BaseModel):
    """vLLM's ``GET /tokenizer_info``: the tokenizer's class and its Hugging Face-style config.

    A byte vocabulary has no special tokens, so they are all null; clients such as lm-eval's
    remote tokenizer read ``eos_token`` and ``chat_template`` from here.
    """

    model_config = ConfigDict(extra="allow")
    tokenizer_class: str = "ByteTokenizer"
    vocab_size: int = 256
    model_max_length: int
    bos_token: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None
    unk_token: str | None = None
    add_bos_token: bool = False
    add_eos_token: bool = False
    clean_up_tokenization_spaces: bool = False
    chat_template: str | None = None


class VersionResponse(BaseModel):
    version: str
