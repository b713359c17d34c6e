"""A TCP proxy in front of a real server (or database) that breaks connections on demand.

It forwards bytes unchanged in both directions. ``drop_all()`` cuts every live connection
without a close frame or response (a network failure, as the client sees it); ``cut()``
does that and keeps refusing new connections (closed as soon as accepted) until
``restore()``: an outage of whatever stands behind the proxy;
``swallow_next_post()`` lets the next POST reach the server but throws its answer away and
cuts the connection — the server did the work, the client never heard back.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class _Pair:
    client: socket.socket
    upstream: socket.socket
    swallow: bool = False
    closed: threading.Event = field(default_factory=threading.Event)

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class TcpProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._pairs: list[_Pair] = []
        self._lock = threading.Lock()
        self._swallow_next = threading.Event()
        self._down = threading.Event()
        self.connections = 0
        self.swallowed = 0
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone does not on Linux.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self.drop_all()
        self._thread.join(timeout=5)

    def drop_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            pair.close()

    def cut(self) -> None:
        self._down.set()
        self.drop_all()

    def restore(self) -> None:
        self._down.clear()

    def swallow_next_post(self) -> None:
        self._swallow_next.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # listener closed
            if self._down.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            pair = _Pair(client, upstream)
            with self._lock:
                self._pairs.append(pair)
                self.connections += 1
            for source, up in ((client, True), (upstream, False)):
                threading.Thread(target=self._pump, args=(pair, source, up), daemon=True).start()

    def _pump(self, pair: _Pair, source: socket.socket, up: bool) -> None:
        target = pair.upstream if up else pair.client
        try:
            while data := source.recv(65536):
                if up and data.startswith(b"POST ") and self._swallow_next.is_set():
                    self._swallow_next.clear()
                    pair.swallow = True  # set before the request goes on: no answer can race it
                if not up and pair.swallow:
                    with self._lock:
                        self.swallowed += 1
                    break
                target.sendall(data)
        except OSError:
            pass
        pair.close()
