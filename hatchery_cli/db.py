"""``hatchery db upgrade``: the run store's schema (core.store.migrate, Alembic)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hatchery_cli.console import console, fail

db_app = typer.Typer(help="The run store's schema (Alembic migrations).")


@db_app.command("upgrade")
def db_upgrade(
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML settings file (see config.example.yaml).")
    ] = None,
    url: Annotated[str | None, typer.Option(help="Store URL (store.url).")] = None,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Apply the store's migrations; every server also does this at start-up."""
    from core.config import load_settings
    from core.errors import ConfigError
    from core.store.migrate import upgrade_store

    try:
        settings = load_settings(config, **{"store.url": url})
    except ConfigError as exc:
        fail(exc.message)
    now = upgrade_store(settings.store.url, revision)
    console.print(f"store schema at revision {now}", highlight=False)
