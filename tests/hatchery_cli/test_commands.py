"""The ``hatchery`` command's own groups (serve, model, generate) through typer's runner.

The client groups (test, bench, runs) are tested against real servers in tests/clients.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner, Result

from hatchery_cli import app
from unified_api.components import SERVE_TARGETS

ROOT = Path(__file__).resolve().parents[2]
CORPUS = "To be, or not to be, that is the question.\n" * 40


def hatchery(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def test_the_command_groups_are_all_wired() -> None:
    listed = hatchery("--help")
    assert listed.exit_code == 0
    for group in ("serve", "model", "generate", "test", "bench", "runs"):
        assert group in listed.stdout
    for target in SERVE_TARGETS:
        assert target in hatchery("serve", "--help").stdout
    refused = hatchery("serve", "everything")
    assert refused.exit_code == 2 and "'everything' is not one of" in refused.output


def test_python_dash_m_runs_the_command_without_importing_torch() -> None:
    """``python -m hatchery_cli`` is the command; the engine loads only for model commands."""
    code = "import sys, runpy; sys.argv = ['hatchery', 'runs', '--help']\n"
    code += "try:\n    runpy.run_module('hatchery_cli', run_name='__main__')\n"
    code += "except SystemExit as exit:\n    assert exit.code == 0, exit.code\n"
    code += "apps = {'test_api.app', 'generator_api.app', 'benchmark_api.app'}\n"
    code += "print(sorted({'torch', *apps} & set(sys.modules)))"
    shown = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0, shown.stderr
    assert "Runs of every component" in shown.stdout
    assert shown.stdout.strip().splitlines()[-1] == "[]"


def test_model_create_list_and_generate(tmp_path: Path) -> None:
    models, data = tmp_path / "models", tmp_path / "data"
    (data / "corpora").mkdir(parents=True)
    (data / "corpora" / "hamlet.txt").write_text(CORPUS, encoding="utf-8")
    dirs = ("--models-dir", str(models), "--data-dir", str(data))
    trained = hatchery(
        "model", "create", "--name", "tiny-hamlet", "--template", "bdh-nano",
        "--corpus", "hamlet.txt", "--steps", "2", "--batch-size", "2", "--block-size", "16",
        "--eval-every", "1", *dirs,
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert "created tiny-hamlet" in trained.output and "bits/byte" in trained.output
    metadata = json.loads((models / "tiny-hamlet" / "config.json").read_text(encoding="utf-8"))
    training = metadata["metadata"]["training"]
    assert training["steps"] == 2 and training["corpus"] == "hamlet.txt"
    # The schedule core derives from the flags (core.engine.training.training_schedule).
    assert training["hyperparameters"] | {"threads": None} == {
        **training["hyperparameters"],
        "steps": 2, "batch_size": 2, "block_size": 16, "learning_rate": 1e-3,
        "min_learning_rate": 1e-4, "warmup_steps": 0, "eval_every": 1, "checkpoint_every": 1,
        "seed": 1337, "threads": None,
    }  # fmt: skip
    untrained = hatchery(
        "model", "create", "--name", "blank", "--template", "bdh-nano", "--steps", "0", *dirs
    )
    assert untrained.exit_code == 0, untrained.output
    listed = hatchery("model", "list", "--models-dir", str(models))
    assert listed.exit_code == 0 and {"tiny-hamlet", "blank"} <= set(listed.stdout.split())
    generated = hatchery(
        "generate", "To be", "--model", "tiny-hamlet", "--max-tokens", "5", "--seed", "1",
        "--models-dir", str(models),
    )  # fmt: skip
    assert generated.exit_code == 0, generated.output
    assert generated.stdout.startswith("To be") and len(generated.stdout.rstrip("\n")) > 5


def test_bad_model_input_exits_2_with_the_reason(tmp_path: Path, models_dir: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    dirs = ("--models-dir", str(models), "--data-dir", str(tmp_path / "data"))
    cases = [
        (("model", "create", "--name", "x", "--template", "bdh-huge", "--steps", "0", *dirs),
         "unknown template 'bdh-huge'"),
        (("model", "create", "--name", "../escape", "--template", "bdh-nano", *dirs),
         "model name"),
        (("model", "create", "--name", "x", "--corpus", "missing.txt", *dirs), "missing.txt"),
        (("generate", "Hi", "--model", "no-such-model", "--models-dir", str(models)),
         "no-such-model"),
        (("generate", "Hi", "--model", "bdh-nano", "--top-p", "2", "--models-dir", str(models)),
         "top_p"),
        (("model", "import", str(tmp_path / "absent.pt"), "--name", "y", "--models-dir",
          str(models)), "absent.pt"),
    ]  # fmt: skip
    for args, reason in cases:
        result = hatchery(*args)
        assert result.exit_code == 2, (args, result.output)
        assert result.output.startswith("error:") and reason in result.output, result.output
    assert not (models / "x").exists()
