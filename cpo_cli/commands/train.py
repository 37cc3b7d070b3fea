"""`cpo train RECIPE [key=value ...]` — train the recipe's model with CPO (or a variant)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cpo_cli import console
from cpo_cli.commands.options import Quiet
from cpo_cli.errors import CpoError

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
    launch: Annotated[
        int | None,
        typer.Option(
            "--launch",
            min=1,
            help="Start N processes on this machine with torchrun (`torchrun --standalone "
            "--nproc_per_node N -m cpo_cli train ...`), e.g. DDP over CPU processes or one "
            "process per GPU. For several machines use torchrun or accelerate launch "
            "directly (docs/distributed.md).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Train a model with CPO from a recipe: checkpoints, metrics.jsonl and the final model go to
    training.output_dir. Works under `accelerate launch -m cpo_cli train RECIPE` and `torchrun
    -m cpo_cli train RECIPE`."""
    from cpo_cli.recipe.loader import load_recipe

    if quiet:  # `cpo train R --quiet` as well as `cpo --quiet train R`
        console.set_quiet(True)
    try:
        loaded = load_recipe(recipe, overrides or [])
    except CpoError as err:
        # read before the processes form a group: every process of a machine reads the same
        # file, so the first of each machine reports it
        err.scope = "node"
        raise
    if launch is not None:
        hand_off_to_torchrun(launch, recipe, overrides or [], quiet=quiet)
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


def torchrun_command(
    processes: int, recipe: Path, overrides: list[str], *, quiet: bool
) -> list[str]:
    """The torchrun command `--launch N` runs: this Python, one machine, a free port."""
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", str(processes), "-m", "cpo_cli", "train", str(recipe)]
    return [*command, *overrides, *(["--quiet"] if quiet else [])]


def hand_off_to_torchrun(
    processes: int, recipe: Path, overrides: list[str], *, quiet: bool
) -> None:
    """Replace this process with torchrun (no process management of our own: torchrun starts,
    watches and stops the workers, and its exit code is the command's)."""
    import os

    from cpo_cli.errors import UsageError

    if "WORLD_SIZE" in os.environ:
        raise UsageError(
            "--launch: this process was itself started by a distributed launcher "
            f"(WORLD_SIZE={os.environ['WORLD_SIZE']}); drop --launch"
        )
    command = torchrun_command(processes, recipe, overrides, quiet=quiet)
    console.info(f"launching: {' '.join(command[1:])}")
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)


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
