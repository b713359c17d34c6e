"""The `hatchery` command line: `serve`, `model ...` and `generate` (client commands join later)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from clients.cli import bench_app, runs_app, test_app

app = typer.Typer(help="Hatchery: test, generate with, and benchmark BDH models.")
model_app = typer.Typer(help="Create, import and list models.")
app.add_typer(model_app, name="model")
app.add_typer(test_app, name="test")
app.add_typer(bench_app, name="bench")
app.add_typer(runs_app, name="runs")
db_app = typer.Typer(help="The run store's schema (Alembic migrations).")
app.add_typer(db_app, name="db")
console = Console()

ModelsDir = Annotated[Path, typer.Option(help="Directory of registered models.")]
DataDir = Annotated[Path, typer.Option(help="Data directory (corpora, caches).")]


ServeTarget = Literal["all", "test", "generator", "benchmark"]


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
        console.print(f"[red]error:[/red] {escape(exc.message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc
    now = upgrade_store(settings.store.url, revision)
    console.print(f"store schema at revision {now}", highlight=False)


@app.command("serve")
def serve(
    target: Annotated[
        ServeTarget, typer.Argument(help="Everything on one port, or one component alone.")
    ] = "all",
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
    from core.errors import ConfigError
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
        # soft_wrap: a one-line problem stays one line (for logs and grep), however narrow.
        console.print(f"[red]error:[/red] {escape(exc.message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc
    run(
        options,
        settings,
        workers=workers,
        graceful_timeout_s=graceful_timeout,
        ws_ping_interval_s=ws_ping_interval,
        ws_ping_timeout_s=ws_ping_timeout,
        access_log=access_log,
    )


@model_app.command("create")
def model_create(
    name: Annotated[str, typer.Option(help="Registry name of the new model.")],
    template: Annotated[str, typer.Option(help="Architecture template.")] = "bdh-tiny",
    corpus: Annotated[
        str, typer.Option(help="'shakespeare' or a file name in DATA_DIR/corpora.")
    ] = "shakespeare",
    steps: Annotated[int, typer.Option(help="Optimizer steps (0: untrained).")] = 1000,
    batch_size: Annotated[int, typer.Option()] = 8,
    block_size: Annotated[int, typer.Option()] = 256,
    learning_rate: Annotated[float, typer.Option()] = 1e-3,
    dropout: Annotated[float | None, typer.Option(help="Override the template's.")] = None,
    eval_every: Annotated[int, typer.Option()] = 100,
    seed: Annotated[int, typer.Option()] = 1337,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    description: Annotated[str, typer.Option()] = "",
    models_dir: ModelsDir = Path("models"),
    data_dir: DataDir = Path("data"),
) -> None:
    """Create a model from a template and train it on a corpus."""
    from core.engine.corpus import CorpusError, load_corpus
    from core.engine.creation import create_model
    from core.engine.registry import ModelRegistry
    from core.engine.training import TrainingConfig

    try:
        text = load_corpus(corpus, data_dir) if steps > 0 else None
        training = TrainingConfig(
            steps=steps,
            batch_size=batch_size,
            block_size=block_size,
            learning_rate=learning_rate,
            min_learning_rate=learning_rate / 10,
            warmup_steps=min(50, max(1, steps // 10)),
            eval_every=eval_every,
            checkpoint_every=max(1, min(100, eval_every)),
            seed=seed,
            threads=threads,
        )
    except (CorpusError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    command = "hatchery " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(f"training {name}", total=steps, info="")

        def on_update(update):  # type: ignore[no-untyped-def]
            info = f"loss {update.loss:.3f}  {update.tokens_per_s:,.0f} tok/s"
            if update.val_bits_per_byte is not None:
                info += f"  val {update.val_bits_per_byte:.3f} bpb"
                progress.console.print(f"step {update.step}: {info}")
            progress.update(task, completed=update.step, info=info)

        created = create_model(
            ModelRegistry(models_dir),
            name=name,
            template=template,
            corpus=text,
            training=training,
            dropout=dropout,
            description=description,
            command=command,
            state_dir=data_dir / "training" / name,
            on_update=on_update,
        )
    evaluation = created.metadata.get("evaluation") or {}
    console.print(
        f"[green]created[/green] {created.name}: {created.parameters:,} parameters, "
        f"{created.size_bytes / 2**20:.1f} MB at {created.path}"
        + (f", val {evaluation['val_bits_per_byte']} bits/byte" if evaluation else "")
    )


@model_app.command("list")
def model_list(models_dir: ModelsDir = Path("models")) -> None:
    """List registered models."""
    from core.engine.registry import ModelRegistry

    table = Table("name", "parameters", "size (MB)", "val bits/byte", "description")
    for info in ModelRegistry(models_dir).list():
        evaluation = info.metadata.get("evaluation") or {}
        table.add_row(
            info.name,
            f"{info.config.parameter_count():,}",
            f"{info.size_bytes / 2**20:.1f}",
            str(evaluation.get("val_bits_per_byte", "-")),
            info.metadata.get("description", ""),
        )
    console.print(table)


@model_app.command("import")
def model_import(
    file: Annotated[Path, typer.Argument(help="Official-format torch.save file.")],
    name: Annotated[str, typer.Option(help="Registry name.")],
    n_layer: Annotated[int, typer.Option(help="Layers (not recoverable from weights).")] = 6,
    models_dir: ModelsDir = Path("models"),
) -> None:
    """Import an official-format (pathwaycom/bdh) checkpoint."""
    from core.engine.checkpoint import CheckpointError, import_official
    from core.engine.registry import InvalidModelNameError, ModelRegistry

    try:
        model, metadata = import_official(file, n_layer=n_layer)
        path = ModelRegistry(models_dir).register(name, model, metadata)
    except (CheckpointError, InvalidModelNameError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    console.print(
        f"[green]imported[/green] {name} ({model.config.parameter_count():,} params) at {path}"
    )


@app.command("generate")
def generate(
    prompt: Annotated[str, typer.Argument()],
    model: Annotated[str, typer.Option(help="Registry name.")] = "bdh-shakespeare",
    max_tokens: Annotated[int, typer.Option()] = 256,
    temperature: Annotated[float, typer.Option()] = 0.8,
    top_k: Annotated[int, typer.Option()] = 0,
    top_p: Annotated[float, typer.Option()] = 1.0,
    seed: Annotated[int | None, typer.Option()] = None,
    mode: Annotated[str, typer.Option(help="recurrent or recompute.")] = "recurrent",
    models_dir: ModelsDir = Path("models"),
) -> None:
    """Stream a completion of PROMPT to the terminal."""
    from pydantic import ValidationError

    from core.engine import ModelRegistry, SamplingParams
    from core.engine.registry import InvalidModelNameError, ModelNotFoundError

    try:
        params = SamplingParams(
            max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
        )
        lm = ModelRegistry(models_dir).load(model)
    except (ValidationError, ModelNotFoundError, InvalidModelNameError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    console.print(prompt, style="bold", end="")
    for piece in lm.stream(prompt, params, mode=mode):  # type: ignore[arg-type]
        console.print(piece, end="", markup=False, highlight=False)
    console.print()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
