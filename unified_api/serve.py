"""Running a server: what ``hatchery serve`` does, under uvicorn.

``hatchery serve [all|test|generator|benchmark]`` serves the unified app or one component
alone, with the same paths either way. Settings come from the layers of ``core.config``
(defaults < ``--config`` file < ``HATCHERY_*`` environment < flags).

With one worker (the default) the app is built in this process. With ``--workers N`` uvicorn
starts N processes that each build the app through ``app_from_environment``; the target,
config file and flag overrides reach them in one environment variable (secrets stay in the
config file or the environment they came from). Each worker has its own engine (a copy of
every model in memory) and its own metrics and memory rate-limit counts, so prefer one worker
per container and scale with replicas on PostgreSQL and Redis.

SIGTERM or Ctrl-C shut down gracefully: uvicorn stops accepting, closes WebSockets (code 1012)
and waits at most ``graceful_timeout_s`` for open requests, then the app's lifespan gives
running jobs ``executor.grace_s`` to stop before they are re-queued.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI

from core.api.middleware import configure_logging
from core.config import Settings, load_settings
from core.deployment import check_exposure
from unified_api.app import create_app as create_unified_app
from unified_api.components import ALL, SERVE_TARGETS, component
from unified_api.dashboard import dashboard_options

logger = logging.getLogger(__name__)

# Not HATCHERY_-prefixed, so the settings loader never reads them as settings.
SERVE_ENV = "_HATCHERY_SERVE"
RUN_ENV = "_HATCHERY_SERVE_RUN"  # run()'s options, for a server started as a child process


@dataclass(frozen=True)
class ServeOptions:
    """Everything a worker needs to build the same app as its siblings."""

    target: str = ALL
    config_file: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> Settings:
        return load_settings(self.config_file, **self.overrides)

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> ServeOptions:
        raw = os.environ.get(SERVE_ENV)
        if raw is None:
            raise RuntimeError(f"{SERVE_ENV} is not set: start workers with `hatchery serve`")
        return cls(**json.loads(raw))


def default_threads(workers: int) -> int:
    """torch threads per worker when ``model.threads`` is unset: half the usable cores.

    The other half is left to the event loop, the store, the scheduler's Python work and the
    other workers; small BDH models gain little from more intra-op threads.
    """
    try:
        cores = len(os.sched_getaffinity(0))  # respects container CPU sets
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // (2 * workers))


def resolve_options(
    target: str,
    config_file: str | None,
    *,
    host: str | None = None,
    port: int | None = None,
    model: str | None = None,
    threads: int | None = None,
    workers: int = 1,
    services: Mapping[str, str | None] | None = None,
) -> tuple[ServeOptions, Settings]:
    """The flags as setting overrides, validated; raises ``ConfigError``.

    ``--model NAME`` makes NAME the default model and the one model preloaded. ``services``:
    ``{"generator_url": ...}`` from ``--generator-url`` and its siblings. A server that would
    bind beyond loopback with auth off is refused here (``core.deployment.check_exposure``).
    """
    if target not in SERVE_TARGETS:
        raise ValueError(f"unknown target {target!r}: choose one of {', '.join(SERVE_TARGETS)}")
    overrides: dict[str, Any] = {"server.host": host, "server.port": port, "model.threads": threads}
    if model is not None:
        overrides |= {"model.default": model, "model.preload": [model]}
    for name, url in (services or {}).items():
        overrides[f"services.{name}"] = url
    overrides = {key: value for key, value in overrides.items() if value is not None}
    settings = load_settings(config_file, **overrides)
    if settings.model.threads is None:
        overrides["model.threads"] = default_threads(workers)
        settings = load_settings(config_file, **overrides)
    check_exposure(settings)
    return ServeOptions(target=target, config_file=config_file, overrides=overrides), settings


def build_app(target: str, settings: Settings) -> FastAPI:
    """The app ``target`` names: the unified one or a component's own, with the dashboard."""
    if target == ALL:
        return create_unified_app(settings)
    return component(target).create_app(settings, **dashboard_options())


def app_from_environment() -> FastAPI:
    """uvicorn's factory in each worker process (``--workers N``)."""
    options = ServeOptions.from_env()
    settings = options.settings()
    configure_logging(settings.logging)
    return build_app(options.target, settings)


def run(
    options: ServeOptions,
    settings: Settings,
    *,
    workers: int = 1,
    graceful_timeout_s: float = 10.0,
    ws_ping_interval_s: float = 20.0,
    ws_ping_timeout_s: float = 20.0,
    access_log: bool = True,
) -> None:
    """Serve until SIGTERM / SIGINT (blocking)."""
    configure_logging(settings.logging)
    common: dict[str, Any] = {
        "host": settings.server.host,
        "port": settings.server.port,
        "log_config": None,  # keep the logging configure_logging set up (JSON or text)
        "access_log": access_log,
        "ws_ping_interval": ws_ping_interval_s,
        "ws_ping_timeout": ws_ping_timeout_s,
        # The app closes bigger messages with 1009 too; this keeps uvicorn from buffering
        # up to its 16 MiB default first.
        "ws_max_size": settings.server.max_body_bytes,
        # uvicorn takes whole seconds here; round up so the bound is never shorter.
        "timeout_graceful_shutdown": max(1, math.ceil(graceful_timeout_s)),
        "lifespan": "on",
    }
    logger.info(
        "serving %s on http://%s:%d (%d worker%s)",
        options.target,
        settings.server.host,
        settings.server.port,
        workers,
        "" if workers == 1 else "s",
    )
    if workers == 1:
        uvicorn.Server(uvicorn.Config(build_app(options.target, settings), **common)).run()
        return
    if settings.rate_limiting.enabled and settings.rate_limiting.storage.startswith("memory"):
        logger.warning("rate limits are counted per worker: use a redis:// storage to share them")
    os.environ[SERVE_ENV] = options.to_env()
    uvicorn.run("unified_api.serve:app_from_environment", factory=True, workers=workers, **common)


def main() -> None:
    """A server started as a child process (``hatchery serve components``): what the
    environment says, served until SIGTERM."""
    options = ServeOptions.from_env()
    run(options, options.settings(), **json.loads(os.environ.get(RUN_ENV, "{}")))


if __name__ == "__main__":
    main()
