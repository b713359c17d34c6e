"""``hatchery model create|list|import`` and ``hatchery generate``: the local model registry.

These work on the models directory directly (no server): training runs in this process with a
progress bar, and ``generate`` streams from a model loaded here. The engine (torch) is
imported inside each command, so that ``hatchery --help`` and the client commands start
without it.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hatchery_cli.console import console, fail

if TYPE_CHECKING:
    from core.engine.training import TrainingUpdate

model_app = typer.Typer(help="Create, import and list models.")

ModelsDir = Annotated[Path, typer.Option(help="Directory of registered models.")]
DataDir = Annotated[Path, typer.Option(help="Data directory (corpora, caches).")]


@model_app.command("create")
def model_create(
    name: Annotated[str, typer.Option(help="Registry name of the new model.")],
    template: Annotated[str, typer.Option(help="Architecture template.")] = "bdh-tiny",
    corpus: Annotated[
        str, typer.Option(help="'shakespeare' or a file name in DATA_DIR/corpora.")
    ] = "shakespeare",
    steps: Annotated[int, typer.Option(min=0, help="Optimizer steps (0: untrained).")] = 1000,
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
    from core.engine.registry import InvalidModelNameError, ModelRegistry, validate_model_name
    from core.engine.training import get_template, training_schedule

    try:
        validate_model_name(name)
        get_template(template)
        text = load_corpus(corpus, data_dir) if steps > 0 else None
        training = training_schedule(
            steps,
            learning_rate=learning_rate,
            eval_every=eval_every,
            batch_size=batch_size,
            block_size=block_size,
            seed=seed,
            threads=threads,
        )
    except KeyError as exc:  # an unknown template; its message names the known ones
        fail(exc.args[0])
    except (InvalidModelNameError, CorpusError, ValueError) as exc:
        fail(exc)
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

        def on_update(update: TrainingUpdate) -> None:
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
        fail(exc)
    console.print(
        f"[green]imported[/green] {name} ({model.config.parameter_count():,} params) at {path}"
    )


def generate(
    prompt: Annotated[str, typer.Argument()],
    model: Annotated[str, typer.Option(help="Registry name.")] = "bdh-shakespeare",
    max_tokens: Annotated[int, typer.Option()] = 256,
    temperature: Annotated[float, typer.Option()] = 0.8,
    top_k: Annotated[int, typer.Option()] = 0,
    top_p: Annotated[float, typer.Option()] = 1.0,
    seed: Annotated[int | None, typer.Option()] = None,
    mode: Annotated[Literal["recurrent", "recompute"], typer.Option()] = "recurrent",
    models_dir: ModelsDir = Path("models"),
) -> None:
    """Stream a completion of PROMPT to the terminal."""
    from pydantic import ValidationError

    from core.engine.registry import InvalidModelNameError, ModelNotFoundError, ModelRegistry
    from core.engine.sampling import SamplingParams

    try:
        params = SamplingParams(
            max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
        )
        lm = ModelRegistry(models_dir).load(model)
    except (ValidationError, ModelNotFoundError, InvalidModelNameError) as exc:
        fail(exc)
    console.print(prompt, style="bold", end="")
    for piece in lm.stream(prompt, params, mode=mode):
        console.print(piece, end="", markup=False, highlight=False)
    console.print()
