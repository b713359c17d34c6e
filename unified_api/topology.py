"""``hatchery serve components``: the three component servers, wired to each other.

Each component runs in a process of its own, exactly as ``hatchery serve generator`` (and as
the compose ``components`` profile runs them): generator on 8001, test on 8002, benchmark on
8003 by default (``unified_api.components``), every one with the same settings layers, so they
share the store and the models directory. Each is told where the others are
(``services.*``, unless the flags or settings already say), so the test and benchmark servers
send their OpenAI requests to the generator.

This process only supervises: SIGTERM / Ctrl-C is passed on to every server, which shuts
down gracefully; when one server exits on its own, the others are stopped too and its exit
status is returned.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from core.api.middleware import configure_logging
from core.api.outbound import root_url
from core.config import Settings
from unified_api.components import COMPONENTS
from unified_api.serve import RUN_ENV, SERVE_ENV, ServeOptions, resolve_options

logger = logging.getLogger(__name__)

_POLL_S = 0.2
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ComponentServer:
    name: str
    options: ServeOptions
    settings: Settings

    @property
    def url(self) -> str:
        return root_url("http", self.settings.server.host, self.settings.server.port)


def plan_components(
    config_file: str | None,
    *,
    host: str | None = None,
    ports: Mapping[str, int] | None = None,
    model: str | None = None,
    threads: int | None = None,
    services: Mapping[str, str | None] | None = None,
) -> list[ComponentServer]:
    """Each component's options and validated settings; raises ``ConfigError``.

    ``ports``: component -> port (default: each one's registry port). ``services``: given
    ``--generator-url`` etc.; a peer not given (nor configured) is this topology's own.
    """
    chosen = {name: entry.default_port for name, entry in COMPONENTS.items()} | dict(ports or {})
    planned: list[ComponentServer] = []
    for name in COMPONENTS:
        # First the settings as configured, to learn the host and any peers already set.
        _, base = resolve_options(name, config_file, host=host, port=chosen[name])
        configured = base.services.peers()
        given = {key: value for key, value in (services or {}).items() if value is not None}
        own = {
            f"{peer}_url": root_url("http", base.server.host, chosen[peer]) for peer in COMPONENTS
        }
        wiring = own | {f"{peer}_url": url for peer, url in configured.items()} | given
        options, settings = resolve_options(
            name,
            config_file,
            host=host,
            port=chosen[name],
            model=model,
            threads=threads,
            workers=len(COMPONENTS),  # torch threads: the machine is shared three ways
            services=wiring,
        )
        planned.append(ComponentServer(name, options, settings))
    return planned


def run_components(servers: Sequence[ComponentServer], **run_options: Any) -> int:
    """Start every server as a child process and supervise them; returns an exit status."""
    if servers:
        configure_logging(servers[0].settings.logging)
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        logger.info("signal %d: stopping the component servers", signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for server in servers:
            children[server.name] = _spawn(server, run_options)
            logger.info(
                "%s server on %s (pid %d)", server.name, server.url, children[server.name].pid
            )
        status = 0
        while not stopping:
            ended = {name: child.poll() for name, child in children.items()}
            failed = {name: code for name, code in ended.items() if code is not None}
            if failed:
                name, code = next(iter(failed.items()))
                logger.error("the %s server exited (status %d): stopping the others", name, code)
                status = code or 1
                break
            time.sleep(_POLL_S)
        _stop_all(children, timeout_s=float(run_options.get("graceful_timeout_s", 10.0)) + 20)
        return status
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _spawn(server: ComponentServer, run_options: Mapping[str, Any]) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env[SERVE_ENV] = server.options.to_env()
    env[RUN_ENV] = json.dumps(dict(run_options))
    command = [sys.executable, "-m", "unified_api.serve"]
    return subprocess.Popen(command, env=env, preexec_fn=_stop_with_parent)


def _stop_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the supervisor dies, even by SIGKILL,
    so no server outlives it holding its port."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: Ctrl-C / SIGTERM still stop them
        pass


def _stop_all(children: Mapping[str, subprocess.Popen[bytes]], timeout_s: float) -> None:
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for name, child in children.items():
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("the %s server did not stop in time: killing it", name)
            child.kill()
            child.wait()
