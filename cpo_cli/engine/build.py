"""Setup of a training run in small `build_*` functions: the accelerator, then tokenizer, data,
model, loaders, optimizer and schedule, all prepared by accelerate and gathered in one `Run`."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpo_cli.engine.checkpoint import register_state_hooks
from cpo_cli.engine.distributed import LauncherRequest, RecipeRequest, RunShape, build_accelerator
from cpo_cli.engine.schedule import Plan, build_plan
from cpo_cli.errors import RecipeError

if TYPE_CHECKING:
    from cpo_cli.recipe.loader import LoadedRecipe
    from cpo_cli.recipe.schema import PeftSection, Recipe
    from cpo_cli.recipe.training import TrainingConfig

__all__ = ["Run", "build_accelerator", "build_run", "check_sharded_run", "output_dir_of"]

DEFAULT_OUTPUT_DIR = "trainer_output"


@dataclass
class Run:
    """Everything the loop needs, built once by `build_run`."""

    accelerator: Any
    model: Any
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    train_loader: Any
    sampler: Any
    eval_loader: Any
    eval_dataset: Any
    training: TrainingConfig
    plan: Plan
    output_dir: Path
    recipe_yaml: str
    is_encoder_decoder: bool
    peft: PeftSection | None = None
    config_for_trackers: dict[str, Any] = field(default_factory=dict)
    #: the command that started this run, secrets hidden (for "resume with: ...")
    command: str = "cpo train RECIPE"
    #: what runs (processes, machines, mode, batch arithmetic): the start-up line
    shape: RunShape | None = None
    #: what the launcher and the recipe asked for, to say what was not granted
    launcher: LauncherRequest | None = None
    request: RecipeRequest | None = None
    #: forwards each process runs per evaluation (FSDP/ZeRO-3: the same on every process)
    eval_batches_on_every_process: int | None = None


def output_dir_of(training: TrainingConfig) -> Path:
    """`training.output_dir`; None means `trainer_output` (as the schema says)."""
    folder = DEFAULT_OUTPUT_DIR if training.output_dir is None else training.output_dir
    return Path(folder).expanduser()


def build_run(loaded: LoadedRecipe) -> Run:
    """Load tokenizer, data and model; build loaders, optimizer and schedule; prepare them all
    in one `accelerator.prepare` (FSDP2 and ZeRO need model and optimizer together, DeepSpeed
    the loader too); then choose the batch layout by probing the prepared model.

    Each block runs on every process and is left together (`on_every_process`): a user error
    on any process stops all of them, reported once with its rank and host."""
    from transformers.utils import logging as hf_logging

    from cpo_cli.engine.data import (
        DeferredLayout,
        build_eval_dataloader,
        build_train_dataloader,
        choose_batch_layout,
        load_datasets,
        loader_settings,
    )
    from cpo_cli.engine.distributed import count_machines, reshard, run_shape
    from cpo_cli.engine.model import build_model, build_tokenizer, is_encoder_decoder_model
    from cpo_cli.engine.optim import build_optimizer, build_scheduler
    from cpo_cli.engine.ranks import on_every_process, reduce_max
    from cpo_cli.recipe.dump import to_yaml

    hf_logging.disable_progress_bar()  # our own progress is the one bar on screen
    recipe = loaded.recipe
    training = recipe.training
    accelerator, launcher, request = build_accelerator(training)
    with on_every_process(accelerator):
        tokenizer = build_tokenizer(recipe.model)
        encoder_decoder = is_encoder_decoder_model(recipe.model, training)
        # the main process prepares (and caches) the data first, the others then read it
        datasets = (
            load_datasets(recipe, tokenizer, encoder_decoder)
            if accelerator.is_main_process
            else None
        )
    with on_every_process(accelerator):
        if datasets is None:
            datasets = load_datasets(recipe, tokenizer, encoder_decoder)
    train_dataset, eval_dataset = datasets
    with on_every_process(accelerator):
        model = build_model(recipe.model, training, recipe.peft)
    with on_every_process(accelerator):
        layout = DeferredLayout()
        loader_kwargs = loader_settings(
            model, tokenizer, training, is_encoder_decoder=encoder_decoder, layout=layout
        )
        optimizer = build_optimizer(model, training)
        train_loader, sampler = build_train_dataloader(train_dataset, training, **loader_kwargs)
        eval_loader = (
            build_eval_dataloader(
                eval_dataset,
                training,
                **loader_kwargs,
                process_index=accelerator.process_index,
                num_processes=accelerator.num_processes,
            )
            if eval_dataset is not None
            else None
        )

    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    layout.value = choose_batch_layout(model, training, is_encoder_decoder=encoder_decoder)
    reshard(model)  # the probe ran a forward without a backward
    with on_every_process(accelerator):
        plan = build_plan(len(train_loader), training)
        # the schedule counts optimizer steps; it is stepped by hand, once per optimizer step.
        # It is not registered with accelerate, which would pickle it: checkpoints keep it as
        # JSON.
        scheduler = build_scheduler(optimizer, training, plan.total_steps)
    register_state_hooks(accelerator)
    shape = run_shape(accelerator, training, plan, machines=count_machines(accelerator))
    eval_batches = None
    if eval_loader is not None and shape.sharded_parameters:
        eval_batches = reduce_max(accelerator, len(eval_loader))
    return Run(
        accelerator=accelerator,
        model=model,
        tokenizer=tokenizer,
        optimizer=optimizer,
        scheduler=scheduler,
        train_loader=train_loader,
        sampler=sampler,
        eval_loader=eval_loader,
        eval_dataset=eval_dataset,
        training=training,
        plan=plan,
        output_dir=output_dir_of(training),
        recipe_yaml=to_yaml(recipe, redact=True),
        is_encoder_decoder=encoder_decoder,
        peft=recipe.peft,
        config_for_trackers=_redacted_dict(recipe),
        command=_command(loaded),
        shape=shape,
        launcher=launcher,
        request=request,
        eval_batches_on_every_process=eval_batches,
    )


def check_sharded_run(run: Run) -> None:
    """What a run with sharded parameters (FSDP, ZeRO-3) cannot do, refused before training.
    The same on every process: call it inside `on_every_process`."""
    from cpo_cli.recipe.distributed import SAVE_ON_EACH_NODE_SHARDED

    training, shape = run.training, run.shape
    if shape is None or not (
        shape.sharded_parameters or shape.mode.startswith(("FSDP", "DeepSpeed"))
    ):
        return
    problems = []
    if training.save_on_each_node:
        problems.append(SAVE_ON_EACH_NODE_SHARDED)
    if shape.sharded_parameters and training.generate_during_eval:
        problems.append(
            f"training.generate_during_eval is not supported under {shape.mode} (each process "
            "would generate its own share, a different number of forwards, while every forward "
            "needs the parameters of every process); run `cpo eval --generate` on the saved "
            "model instead"
        )
    if training.load_best_model_at_end and training.save_only_model:
        problems.append(
            f"training.load_best_model_at_end with training.save_only_model under "
            f"{shape.mode}: the best model is reloaded from its checkpoint's sharded state, "
            "which save_only_model leaves out; drop one of them"
        )
    if problems:
        raise RecipeError("recipe", problems)


def _command(loaded: LoadedRecipe) -> str:
    """`cpo train RECIPE OVERRIDES` as the user ran it (secrets hidden), resume choice left out."""
    kept = [o for o in loaded.overrides if "resume_from_checkpoint=" not in o]
    return "cpo train " + shlex.join([loaded.source, *kept])


def _redacted_dict(recipe: Recipe) -> dict[str, Any]:
    from cpo_cli.recipe.dump import redact

    return redact(recipe)
