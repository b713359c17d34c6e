"""``hatchery serve``: flags to settings overrides (unified_api.serve), then uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from core.errors import ConfigError
from hatchery_cli.console import fail
from unified_api.components import ALL, COMPONENTS, COMPONENTS_TARGET, SERVE_TARGETS

TARGETS = (*SERVE_TARGETS, COMPONENTS_TARGET)
DEFAULT_PORTS = ",".join(str(entry.default_port) for entry in COMPONENTS.values())


def _known_target(target: str) -> str:
    if target not in TARGETS:
        raise typer.BadParameter(f"{target!r} is not one of {', '.join(TARGETS)}")
    return target


def _ports(value: str | None) -> dict[str, int] | None:
    if value is None:
        return None
    parts = value.split(",")
    if len(parts) != len(COMPONENTS) or not all(part.strip().isdigit() for part in parts):
        raise typer.BadParameter(f"give {len(COMPONENTS)} ports, e.g. {DEFAULT_PORTS}")
    return dict(zip(COMPONENTS, (int(part) for part in parts), strict=True))


def serve(
    target: Annotated[
        str,
        typer.Argument(
            callback=_known_target,
            help=f"Everything on one port ({ALL}), one component alone, or {COMPONENTS_TARGET}: "
            f"the three component servers wired to each other ({', '.join(TARGETS)}).",
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
    generator_url: Annotated[
        str | None, typer.Option(help="The generator server's root URL (services.generator_url).")
    ] = None,
    test_url: Annotated[
        str | None, typer.Option(help="The test server's root URL (services.test_url).")
    ] = None,
    benchmark_url: Annotated[
        str | None, typer.Option(help="The benchmark server's root URL (services.benchmark_url).")
    ] = None,
    ports: Annotated[
        str | None,
        typer.Option(
            help=f"{COMPONENTS_TARGET}: the {', '.join(COMPONENTS)} ports ({DEFAULT_PORTS})."
        ),
    ] = None,
) -> None:
    """Serve the API (uvicorn): settings = defaults < --config < HATCHERY_* env < flags."""
    # Imported here: the app plumbing imports the engine (torch), which the other commands,
    # and `hatchery --help`, should not wait for.
    from unified_api.serve import resolve_options, run
    from unified_api.topology import plan_components, run_components

    services = {"generator_url": generator_url, "test_url": test_url}
    services["benchmark_url"] = benchmark_url
    run_options: dict[str, Any] = {
        "graceful_timeout_s": graceful_timeout,
        "ws_ping_interval_s": ws_ping_interval,
        "ws_ping_timeout_s": ws_ping_timeout,
        "access_log": access_log,
    }
    if target == COMPONENTS_TARGET:
        if port is not None or workers != 1:
            fail(f"{COMPONENTS_TARGET}: give --ports {DEFAULT_PORTS}, not --port or --workers")
        config_file = str(config) if config is not None else None
        try:
            servers = plan_components(
                config_file, host=host, ports=_ports(ports), model=model, threads=threads,
                services=services,
            )  # fmt: skip
        except ConfigError as exc:
            fail(exc.message)
        raise typer.Exit(run_components(servers, **run_options))
    if ports is not None:
        fail(f"--ports is for {COMPONENTS_TARGET}; use --port")
    try:
        options, settings = resolve_options(
            target,
            str(config) if config is not None else None,
            host=host,
            port=port,
            model=model,
            threads=threads,
            workers=workers,
            services=services,
        )
    except ConfigError as exc:
        fail(exc.message)
    run(options, settings, workers=workers, **run_options)
