"""``hatchery serve``: flags to settings overrides (unified_api.serve), then uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from core.errors import ConfigError
from hatchery_cli.console import fail
from unified_api.components import ALL, SERVE_TARGETS


def _known_target(target: str) -> str:
    if target not in SERVE_TARGETS:
        raise typer.BadParameter(f"{target!r} is not one of {', '.join(SERVE_TARGETS)}")
    return target


def serve(
    target: Annotated[
        str,
        typer.Argument(
            callback=_known_target,
            help=f"Everything on one port, or one component alone: {', '.join(SERVE_TARGETS)}.",
        ),
    ] = ALL,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML settings file (see config.example.yaml).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (server.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (server.port).")] = None,
    model: Annotated[str | None, typer.Option(help="Default model, the one preloaded.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (one engine each).")] = 1,
    threads: Annotated[
        int | None,
        typer.Option(min=1, help="torch threads per worker; default: cores/2."),
    ] = None,
    graceful_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds open requests get on shutdown.")
    ] = 10.0,
    ws_ping_interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between WebSocket protocol pings.")
    ] = 20.0,
    ws_ping_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds to wait for a pong before closing.")
    ] = 20.0,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = True,
) -> None:
    """Serve the API (uvicorn): settings = defaults < --config < HATCHERY_* env < flags."""
    # Imported here: the app plumbing imports the engine (torch), which the other commands,
    # and `hatchery --help`, should not wait for.
    from unified_api.serve import resolve_options, run

    try:
        options, settings = resolve_options(
            target,
            str(config) if config is not None else None,
            host=host,
            port=port,
            model=model,
            threads=threads,
            workers=workers,
        )
    except ConfigError as exc:
        fail(exc.message)
    run(
        options,
        settings,
        workers=workers,
        graceful_timeout_s=graceful_timeout,
        ws_ping_interval_s=ws_ping_interval,
        ws_ping_timeout_s=ws_ping_timeout,
        access_log=access_log,
    )
