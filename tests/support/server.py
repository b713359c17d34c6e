"""A real uvicorn server on a free port, in a background thread, for HTTP/WS/SSE tests."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI

from tests.support.poll import poll_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LiveServer:
    """Serves ``app`` on 127.0.0.1:<port> (default: a free one); the lifespan runs as in
    production. Servers that must know each other's URLs before their apps exist take ports
    from ``free_port()`` first."""

    def __init__(self, app: FastAPI, port: int = 0, *, access_log: bool = False) -> None:
        """``access_log``: log every request and WebSocket at INFO through the root logger
        (uvicorn's own handlers off), as ``hatchery serve`` does, so tests can read the lines."""
        self.app = app
        self._socket = socket.socket()
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", port))
        self.port: int = self._socket.getsockname()[1]
        logging_options: dict[str, Any] = (
            {"log_level": "info", "log_config": None} if access_log else {"log_level": "warning"}
        )
        config = uvicorn.Config(
            app, lifespan="on", ws_ping_interval=None, access_log=access_log, **logging_options
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="live-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        self._server.run(sockets=[self._socket])

    def start(self, timeout: float = 20.0) -> None:
        self._thread.start()

        def started() -> bool:
            if not self._thread.is_alive():
                raise RuntimeError("live server exited before it started")
            return bool(self._server.started)

        poll_until(started, timeout=timeout, interval=0.01, what="the live server to start")

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._socket.close()


@contextlib.contextmanager
def serve(app: FastAPI) -> Iterator[LiveServer]:
    server = LiveServer(app)
    server.start()
    try:
        yield server
    finally:
        server.stop()
