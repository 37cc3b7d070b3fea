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
    from cpo_cli.losses.formula import describe_objective, simpo_notice

    console.info(describe_objective(loaded.recipe.training), markup=False, highlight=False)
    notice = simpo_notice(loaded.recipe.training)
    if notice:
        console.info(notice, markup=False, highlight=False)
    from cpo_cli.engine.loop import train as run_training  # imports torch: only now

    result = run_training(loaded)
    console.result(summary_table(result))
    console.result(f"model saved to {result.output_dir}")
    training = loaded.recipe.training
    if training.push_to_hub and console.is_main_process():
        # the one final-push path: the repository and token the checkpoint pushes used (a bare
        # hub_model_id is the token owner's), read from the live recipe, not the redacted copy
        from cpo_cli import __version__
        from cpo_cli.hub import push_final

        url = push_final(result.output_dir, training, cpo_version=__version__)
        console.result(f"pushed {result.output_dir} to the Hub: {url}", markup=False)


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
