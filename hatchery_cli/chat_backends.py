"""Where `hatchery chat` sends its turns: the engine in this process, or any OpenAI server.

Both backends take the same `Turn` (the messages of a chat, or one prompt to continue, and the
sampling fields) and give a `Reply`: an iterator of text pieces that knows, once it has ended,
how many tokens the model produced. Closing a reply early stops the generation: in-process the
decode loop ends, against a server the connection drops and the server frees the slot.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

Mode = Literal["chat", "complete"]

# The sampling fields `/set` and the flags know, with how a typed value is read. A server may
# accept more; these are the ones Hatchery's engine honours (OpenAI's plus vLLM's).
SAMPLING_FIELDS: dict[str, type] = {
    "temperature": float,
    "top_p": float,
    "top_k": int,
    "min_p": float,
    "max_tokens": int,
    "seed": int,
    "stop": list,
    "presence_penalty": float,
    "frequency_penalty": float,
    "repetition_penalty": float,
}


class ChatError(Exception):
    """A turn that could not be sent: unknown model, refused parameters, server errors."""


@dataclass
class Turn:
    mode: Mode
    model: str
    messages: list[dict[str, str]] = field(default_factory=list)  # chat mode
    prompt: str = ""  # complete mode
    sampling: dict[str, Any] = field(default_factory=dict)


class Reply(Iterator[str]):
    """Text pieces of one reply, timed; ``tokens`` is exact once the reply has ended."""

    def __init__(self, pieces: Iterator[str]) -> None:
        self._pieces = pieces
        self.started = time.perf_counter()
        self.first_piece_at: float | None = None
        self.ended_at: float | None = None
        self.text = ""

    def __next__(self) -> str:
        try:
            piece = next(self._pieces)
        except StopIteration:
            self.ended_at = time.perf_counter()
            raise
        if self.first_piece_at is None:
            self.first_piece_at = time.perf_counter()
        self.text += piece
        return piece

    def close(self) -> None:
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()
        self.ended_at = time.perf_counter()

    @property
    def tokens(self) -> int | None:
        """Tokens generated, as the engine or the server counted them (None: not told)."""
        return None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_piece_at is None else self.first_piece_at - self.started

    @property
    def tokens_per_s(self) -> float | None:
        """Decode speed: the tokens after the first over the time after the first piece."""
        tokens, first, end = self.tokens, self.first_piece_at, self.ended_at
        if tokens is None or first is None or end is None or tokens < 2 or end <= first:
            return None
        return (tokens - 1) / (end - first)


class Backend(Protocol):
    """Where turns go; ``describe`` names it for the banner."""

    def describe(self) -> str: ...

    def default_model(self) -> str: ...

    def check_model(self, name: str) -> None: ...

    def send(self, turn: Turn) -> Reply: ...

    def close(self) -> None: ...


# In-process ----------------------------------------------------------------------------------


class _LocalReply(Reply):
    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._stream = stream

    @property
    def tokens(self) -> int | None:
        output = self._stream.output
        return None if output is None else int(output.completion_tokens)


class LocalBackend:
    """The engine in this process, on a local models directory (no server needed)."""

    def __init__(self, models_dir: Path) -> None:
        from core.engine.registry import ModelRegistry

        self.models_dir = models_dir
        self.registry = ModelRegistry(models_dir)
        self._loaded: dict[str, Any] = {}

    def describe(self) -> str:
        return f"in-process engine, models from {self.models_dir}"

    def default_model(self) -> str:
        names = [info.name for info in self.registry.list()]
        if not names:
            raise ChatError(f"no models in {self.models_dir}")
        return "bdh-shakespeare" if "bdh-shakespeare" in names else names[0]

    def check_model(self, name: str) -> None:
        self._model(name)

    def send(self, turn: Turn) -> Reply:
        from pydantic import ValidationError

        from core.engine.sampling import SamplingParams
        from core.errors import PlatformError
        from generator_api.templates import chat_template_of, render_chat

        lm = self._model(turn.model)
        defaults = lm.metadata.get("generation_defaults")
        fields = {**(defaults if isinstance(defaults, dict) else {}), **turn.sampling}
        try:
            params = SamplingParams(**fields)
            if turn.mode == "chat":
                prompt = render_chat(chat_template_of(lm.metadata), turn.messages)
            else:
                prompt = turn.prompt
            return _LocalReply(lm.stream(prompt, params))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors()
            )
            raise ChatError(problems) from None
        except (PlatformError, ValueError) as exc:
            raise ChatError(str(exc)) from None

    def close(self) -> None:
        self._loaded.clear()

    def _model(self, name: str) -> Any:
        from core.engine.registry import InvalidModelNameError, ModelNotFoundError

        if name not in self._loaded:
            try:
                self._loaded[name] = self.registry.load(name)
            except (ModelNotFoundError, InvalidModelNameError) as exc:
                raise ChatError(str(exc)) from None
        return self._loaded[name]


# Against a server ----------------------------------------------------------------------------


class _RemoteReply(Reply):
    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._stream = stream

    def __next__(self) -> str:
        from clients import HatcheryError

        try:
            return super().__next__()
        except HatcheryError as exc:  # the server failed after the stream started
            raise ChatError(str(exc)) from None

    @property
    def tokens(self) -> int | None:
        usage = self._stream.usage
        count = usage.get("completion_tokens") if isinstance(usage, dict) else None
        return count if isinstance(count, int) else None


class RemoteBackend:
    """Any OpenAI-compatible server, through `clients.ApiClient` (retries, errors, auth)."""

    def __init__(self, url: str, api_key: str | None) -> None:
        from clients import ApiClient

        self.url = url
        self.client = ApiClient(url, api_key=api_key, typed_results=False)

    def describe(self) -> str:
        return self.url

    def default_model(self) -> str:
        from clients import HatcheryError

        try:  # Hatchery names its default; other servers only list their models
            default = self.client.info().get("default_model")
            if isinstance(default, str) and default:
                return default
        except HatcheryError:
            pass
        try:
            cards = self.client.models()
        except HatcheryError as exc:
            raise ChatError(f"{self.url}: {exc}") from None
        if not cards:
            raise ChatError(f"{self.url} serves no models")
        return cards[0].id

    def check_model(self, name: str) -> None:
        from clients import HatcheryError

        try:
            ids = [card.id for card in self.client.models()]
        except HatcheryError as exc:
            raise ChatError(f"{self.url}: {exc}") from None
        if name not in ids:
            raise ChatError(f"{self.url} has no model {name!r} (it serves {', '.join(ids)})")

    def send(self, turn: Turn) -> Reply:
        from clients import HatcheryError

        params = {**turn.sampling, "stream_options": {"include_usage": True}}
        try:
            if turn.mode == "chat":
                stream = self.client.chat(turn.model, turn.messages, stream=True, **params)
            else:
                stream = self.client.complete(turn.model, turn.prompt, stream=True, **params)
        except HatcheryError as exc:
            raise ChatError(str(exc)) from None
        return _RemoteReply(stream)

    def close(self) -> None:
        self.client.close()
