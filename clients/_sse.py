"""Server-Sent Events of the OpenAI-compatible ``/v1`` streams, turned into text pieces.

No I/O: the clients feed decoded lines in and get text out. A stream is ``data: {chunk}``
events separated by blank lines and ends with exactly one ``data: [DONE]``. An error that
happens after the stream started arrives as ``data: {"error": {...}}`` and is raised.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from clients.errors import HatcheryError, ServerError

DONE = "[DONE]"


class SSEDecoder:
    """Collects ``data:`` lines into event payloads (one call per line, without newline)."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        """The payload of the event this line completes, if it completes one."""
        line = line.rstrip("\r")
        if not line:
            return self._flush()
        if line.startswith(":"):
            return None  # a comment: keep-alive
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value.removeprefix(" "))
        return None

    def close(self) -> str | None:
        """The payload of a last event the server did not end with a blank line."""
        return self._flush()

    def _flush(self) -> str | None:
        if not self._data:
            return None
        payload, self._data = "\n".join(self._data), []
        return payload


class TextStream:
    """Turns the payloads of one completion stream into text pieces."""

    def __init__(self, *, chat: bool) -> None:
        self.chat = chat
        self.done = False
        self.usage: dict[str, Any] | None = None
        self.finish_reasons: dict[int, str] = {}

    def pieces(self, payload: str) -> list[str]:
        if payload.strip() == DONE:
            self.done = True
            return []
        try:
            chunk = json.loads(payload)
        except ValueError:
            raise ServerError(f"unreadable stream chunk: {payload[:100]!r}") from None
        if isinstance(chunk, dict) and isinstance(chunk.get("error"), dict):
            error = chunk["error"]
            raise HatcheryError(
                str(error.get("message") or "stream failed"),
                code=error.get("code"),
                param=error.get("param"),
                type=error.get("type"),
                body=chunk,
            )
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        return [text for text in self._texts(chunk.get("choices") or []) if text]

    def _texts(self, choices: Iterable[dict[str, Any]]) -> Iterable[str]:
        for choice in choices:
            if choice.get("finish_reason"):
                self.finish_reasons[int(choice.get("index", 0))] = choice["finish_reason"]
            if self.chat:
                yield (choice.get("delta") or {}).get("content") or ""
            else:
                yield choice.get("text") or ""


class StreamedText(Iterator[str]):
    """What ``complete``/``chat`` with ``stream=True`` return: an iterator of text pieces.

    Once the stream has ended, ``usage`` holds the server's token counts (when the request
    asked for them with ``stream_options={"include_usage": True}``) and ``finish_reasons`` the
    reason each choice ended; ``close()`` drops the connection, which aborts the generation.
    """

    def __init__(self, pieces: Iterator[str], stream: TextStream) -> None:
        self._pieces = pieces
        self._stream = stream

    def __next__(self) -> str:
        return next(self._pieces)

    @property
    def usage(self) -> dict[str, Any] | None:
        return self._stream.usage

    @property
    def finish_reasons(self) -> dict[int, str]:
        return self._stream.finish_reasons

    def close(self) -> None:
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()


class AsyncStreamedText(AsyncIterator[str]):
    """The async twin of `StreamedText`."""

    def __init__(self, pieces: AsyncIterator[str], stream: TextStream) -> None:
        self._pieces = pieces
        self._stream = stream

    async def __anext__(self) -> str:
        return await anext(self._pieces)

    @property
    def usage(self) -> dict[str, Any] | None:
        return self._stream.usage

    @property
    def finish_reasons(self) -> dict[int, str]:
        return self._stream.finish_reasons

    async def aclose(self) -> None:
        aclose = getattr(self._pieces, "aclose", None)
        if aclose is not None:
            await aclose()
