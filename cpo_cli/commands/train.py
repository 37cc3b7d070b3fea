"""`cpo train RECIPE [key=value ...]` — train the recipe's model with CPO (or a variant)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cpo_cli import console
from cpo_cli.commands.options import Quiet

if TYPE_CHECKING:
    from rich.table import Table

    from cpo_cli.engine.loop import TrainResult


def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="Overrides as key=value, e.g. training.beta=0.2 training.max_steps=10.",
            show_default=False,
        ),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Train a model with CPO from a recipe: checkpoints, metrics.jsonl and the final model go to
    training.output_dir. Works under `accelerate launch -m cpo_cli train RECIPE`."""
    from cpo_cli.recipe.loader import load_recipe

    if quiet:  # `cpo train R --quiet` as well as `cpo --quiet train R`
        console.set_quiet(True)
    loaded = load_recipe(recipe, overrides or [])
    for warning in loaded.warnings:
        console.warn(warning)
    from cpo_cli.engine.loop import train as run_training  # imports torch: only now

    result = run_training(loaded)
    console.result(summary_table(result))
    console.result(f"model saved to {result.output_dir}")
    training = loaded.recipe.training
    if training.push_to_hub and console.is_main_process():
        push_output(result.output_dir, token=training.hub_token, steps=result.global_step)


def push_output(output_dir: Path, *, token: str | None, steps: int) -> None:
    """`push_to_hub: true`: upload the finished output folder as `cpo push` would (the saved
    recipe is redacted, so the live token is passed along)."""
    from cpo_cli import __version__
    from cpo_cli.hub import plan_push, require_token, resolve_settings, upload

    settings = resolve_settings(output_dir, token=token)
    require_token(settings)
    plan = plan_push(output_dir, settings, cpo_version=__version__)
    url = upload(plan, commit_message=f"cpo train: {steps} optimizer steps")
    console.result(f"pushed {len(plan.files)} files to {settings.repo_id}: {url}", markup=False)


def summary_table(result: TrainResult) -> Table:
    """The final metrics as a two-column rich table."""
    from rich.table import Table

    table = Table(
        title=f"cpo train: {result.global_step} optimizer steps in {result.wall_time:.0f}s"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.metrics.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    if result.best_checkpoint:
        table.add_row("best checkpoint", result.best_checkpoint)
    return table
