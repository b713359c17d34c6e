"""The ``hatchery`` command: the top layer, wiring each command group into one Typer app.

    hatchery serve [all|generator|test|benchmark]    the API under uvicorn (hatchery_cli.serve)
    hatchery model create|list|import                 the model registry (hatchery_cli.model)
    hatchery generate PROMPT                          stream a completion (hatchery_cli.model)
    hatchery chat [--url URL]                         talk to a model in the terminal (.chat)
    hatchery db upgrade                               the store's migrations (hatchery_cli.db)
    hatchery test|bench|runs ...                      client commands against a server (clients.cli)

Nothing below imports this package: the commands call plain functions of core, unified_api
and clients, and only print (through rich) and choose exit codes here.
"""

from __future__ import annotations

import typer

from clients.cli import bench_app, runs_app, test_app
from hatchery_cli.chat import chat_command
from hatchery_cli.db import db_app
from hatchery_cli.model import generate, model_app
from hatchery_cli.serve import serve

app = typer.Typer(help="Hatchery: test, generate with, and benchmark BDH models.")
app.command("serve")(serve)
app.add_typer(model_app, name="model")
app.command("generate")(generate)
app.command("chat")(chat_command)
app.add_typer(test_app, name="test")
app.add_typer(bench_app, name="bench")
app.add_typer(runs_app, name="runs")
app.add_typer(db_app, name="db")


def main() -> None:
    app()
