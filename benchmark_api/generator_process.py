"""The Generator as a uvicorn subprocess, for the `make bench` scripts.

Started by module path, not imported: the server under test shares no GIL or event loop with
the clients that measure it, and the Benchmark component imports no other component.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class ServerProcess:
    url: str
    pid: int  # for reading its CPU time (`benchmark_api.serving_cpu`)


@contextlib.contextmanager
def generator_process(
    env: dict[str, str], *, port: int = 0, log: Path | None = None, timeout_s: float = 180.0
) -> Iterator[str]:
    """The Generator on 127.0.0.1:`port` (0: a free one) with `env` over this process's
    environment; yields its URL once `/ready` answers 200. Output goes to `log` if given."""
    with generator_server(env, port=port, log=log, timeout_s=timeout_s) as server:
        yield server.url


@contextlib.contextmanager
def generator_server(
    env: dict[str, str], *, port: int = 0, log: Path | None = None, timeout_s: float = 180.0
) -> Iterator[ServerProcess]:
    """`generator_process`, yielding the URL and the process id."""
    port = port or free_port()
    command = [sys.executable, "-m", "uvicorn", "--factory", "generator_api.app:create_app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(log.open("ab")) if log is not None else None
        process = subprocess.Popen(
            command,
            env=os.environ | env | {"PYTHONPATH": path},
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log, timeout_s)
        yield ServerProcess(url, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(
    url: str, process: subprocess.Popen[bytes], log: Path | None, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the Generator exited with code {process.returncode}{_tail(log)}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Generator at {url} was not ready in {timeout_s} s{_tail(log)}")
        time.sleep(0.2)


def _tail(log: Path | None) -> str:
    return f":\n{log.read_text()[-3000:]}" if log is not None and log.exists() else ""
