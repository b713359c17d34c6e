"""Driving either client from one synchronous test body, so every test runs for both twins.

``Blocking`` runs an ``AsyncApiClient`` on a private event loop: coroutine methods are run to
completion and async iterators become plain iterators. The real async client does all the
work (aiohttp, its own retries and WebSockets); only the waiting is done here.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from clients import ApiClient, AsyncApiClient


class Blocking:
    def __init__(self, client: AsyncApiClient) -> None:
        self.client = client
        self.loop = asyncio.new_event_loop()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.client, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attribute(*args, **kwargs)
            if inspect.isawaitable(result):
                result = self.loop.run_until_complete(result)
            if isinstance(result, AsyncIterator):
                return self._iterate(result)
            return result

        return call

    def _iterate(self, iterator: AsyncIterator[Any]) -> Iterator[Any]:
        try:
            while True:
                try:
                    yield self.loop.run_until_complete(anext(iterator))
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                self.loop.run_until_complete(aclose())

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.client.close())
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()


ClientFactory = Callable[..., Any]


def client_factory(kind: str) -> tuple[ClientFactory, Callable[[], None]]:
    """A factory of clients of ``kind`` ("sync" or "async") and a function closing them all."""
    made: list[Any] = []

    def make(base_url: str, **options: Any) -> Any:
        client: Any
        if kind == "sync":
            client = ApiClient(base_url, **options)
        else:
            client = Blocking(AsyncApiClient(base_url, **options))
        made.append(client)
        return client

    def close_all() -> None:
        for client in reversed(made):
            client.close()

    return make, close_all
