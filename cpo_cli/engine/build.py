"""Setup of a training run in small `build_*` functions: the accelerator, then tokenizer, data,
model, loaders, optimizer and schedule, all prepared by accelerate and gathered in one `Run`."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpo_cli.engine.checkpoint import register_state_hooks
from cpo_cli.engine.schedule import Plan, build_plan
from cpo_cli.errors import RecipeError

if TYPE_CHECKING:
    from cpo_cli.recipe.loader import LoadedRecipe
    from cpo_cli.recipe.schema import PeftSection, Recipe
    from cpo_cli.recipe.training import TrainingConfig

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


def build_accelerator(training: TrainingConfig) -> Any:
    """Mixed precision from bf16/fp16 (fp32 on a CPU unless asked), accumulation, seeds."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if training.bf16:
        precision = "bf16"
    elif training.fp16:
        precision = "fp16"
    else:
        precision = "no"
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import ProjectConfiguration

    # accelerate keeps its settings in process-wide singletons: a second run in the same
    # process (a notebook, the tests, `cpo eval` after training) must be free to pick another
    # precision or accumulation. The process group itself (PartialState) is kept.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    try:
        accelerator = Accelerator(
            mixed_precision=precision,
            project_config=ProjectConfiguration(save_on_each_node=training.save_on_each_node),
            gradient_accumulation_steps=training.gradient_accumulation_steps,
            # on a machine without an accelerator, say so: accelerate only forms a
            # multi-process CPU group (torchrun, mpirun) when told it runs on the CPU
            cpu=training.use_cpu or not _has_accelerator_device(),
        )
    except ValueError as exc:  # e.g. fp16 where this hardware has no fp16 mixed precision
        raise RecipeError(
            "recipe", [f"training.{precision if precision != 'no' else 'use_cpu'}: {exc}"]
        ) from exc
    set_seed(training.seed, deterministic=training.full_determinism)
    return accelerator


def _has_accelerator_device() -> bool:
    import torch

    xpu = getattr(torch, "xpu", None)
    return bool(
        torch.cuda.is_available()
        or torch.backends.mps.is_available()
        or (xpu is not None and xpu.is_available())
    )


def output_dir_of(training: TrainingConfig) -> Path:
    """`training.output_dir`; None means `trainer_output` (as the schema says)."""
    folder = DEFAULT_OUTPUT_DIR if training.output_dir is None else training.output_dir
    return Path(folder).expanduser()


def build_run(loaded: LoadedRecipe) -> Run:
    """Load tokenizer, data and model; build loaders, optimizer and schedule; prepare them all."""
    from transformers.utils import logging as hf_logging

    from cpo_cli.engine.data import (
        build_eval_dataloader,
        build_train_dataloader,
        load_datasets,
        loader_settings,
    )
    from cpo_cli.engine.model import build_model, build_tokenizer, is_encoder_decoder_model
    from cpo_cli.engine.optim import build_optimizer, build_scheduler
    from cpo_cli.recipe.dump import to_yaml

    hf_logging.disable_progress_bar()  # our own progress is the one bar on screen
    recipe = loaded.recipe
    training = recipe.training
    accelerator = build_accelerator(training)
    tokenizer = build_tokenizer(recipe.model)
    encoder_decoder = is_encoder_decoder_model(recipe.model, training)
    with accelerator.main_process_first():  # the main process prepares (and caches) the data
        train_dataset, eval_dataset = load_datasets(recipe, tokenizer, encoder_decoder)
    model = build_model(recipe.model, training, recipe.peft)
    loader_kwargs = loader_settings(model, tokenizer, training, is_encoder_decoder=encoder_decoder)
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

    model, train_loader = accelerator.prepare(model, train_loader)
    plan = build_plan(len(train_loader), training)
    optimizer = accelerator.prepare(build_optimizer(model, training))
    # the schedule counts optimizer steps; it is stepped by hand, once per optimizer step. It
    # is not registered with accelerate, which would pickle it: checkpoints keep it as JSON.
    scheduler = build_scheduler(optimizer, training, plan.total_steps)
    register_state_hooks(accelerator)
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
    )


def _command(loaded: LoadedRecipe) -> str:
    """`cpo train RECIPE OVERRIDES` as the user ran it (secrets hidden), resume choice left out."""
    kept = [o for o in loaded.overrides if "resume_from_checkpoint=" not in o]
    return "cpo train " + shlex.join([loaded.source, *kept])


def _redacted_dict(recipe: Recipe) -> dict[str, Any]:
    from cpo_cli.recipe.dump import redact

    return redact(recipe)
