"""OpenAI-compatible request and response models, one module per endpoint family.

    common       fields every sampling request shares (OpenAI's and vLLM's), chat messages
    completions  /v1/completions
    chat         /v1/chat/completions
    tokenize     /v1/models, /tokenize, /detokenize, /tokenizer_info, /version

Requests are strict like OpenAI's own API: an unknown field is a 400, not silently ignored, so a
typo never falls back to a default. Fields OpenAI defines that a byte-level BDH model cannot
honour (`suffix`, `best_of` ≠ n, tools, non-text content) are accepted by the schema and refused
by `to_sampling_params` / the serving layer with 400 ``unsupported_parameter`` naming the field.
vLLM's extensions (top-k, min-p, repetition penalty, min_tokens, stop_token_ids, bad_words, ...)
are honoured; the README's field list says what each does for a byte-level model. Each request
turns itself into the engine's `SamplingParams` with `to_sampling_params(settings)`, checking
the server's hard limits (``generation.*``).

Response models mirror OpenAI's field for field; streaming chunks are serialised with
``exclude_unset`` so that a chunk carries exactly the keys OpenAI's would (a delta without
``role`` after the first chunk, ``usage`` only when asked for).
"""

from .chat import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatResponseMessage,
    ChatTokenLogprob,
    DeltaMessage,
    ResponseFormat,
    TopLogprob,
)
from .common import (
    MAX_CHAT_TOP_LOGPROBS,
    MAX_COMPLETION_LOGPROBS,
    ChatMessage,
    ContentPart,
    PromptLogprob,
    PromptLogprobs,
    StreamOptions,
    Usage,
    invalid_value,
    unsupported,
)
from .completions import (
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
)
from .tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfo,
    VersionResponse,
)

__all__ = [
    "MAX_CHAT_TOP_LOGPROBS",
    "MAX_COMPLETION_LOGPROBS",
    "ChatChoice",
    "ChatChunkChoice",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatLogprobs",
    "ChatMessage",
    "ChatResponseMessage",
    "ChatTokenLogprob",
    "CompletionChoice",
    "CompletionChunk",
    "CompletionLogprobs",
    "CompletionRequest",
    "CompletionResponse",
    "ContentPart",
    "DeltaMessage",
    "DetokenizeRequest",
    "DetokenizeResponse",
    "ModelCard",
    "ModelList",
    "PromptLogprob",
    "PromptLogprobs",
    "ResponseFormat",
    "StreamOptions",
    "TokenizeRequest",
    "TokenizeResponse",
    "TokenizerInfo",
    "TopLogprob",
    "Usage",
    "VersionResponse",
    "invalid_value",
    "unsupported",
]
