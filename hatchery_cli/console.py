"""Where the commands print: one rich console, and the one way a command reports bad input."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

console = Console()


def fail(error: object) -> NoReturn:
    """Print ``error`` and exit with status 2 (the request itself was wrong)."""
    # soft_wrap: a one-line problem stays one line (for logs and grep), however narrow.
    console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)
