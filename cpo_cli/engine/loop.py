"""`cpo train`: setup in small `build_*` functions, then one training function that reads top to
bottom. Micro-batches (forward + backward) and optimizer steps are separate, named counters.

Built on `accelerate.Accelerator` (device placement, mixed precision, gradient accumulation,
process groups), so `accelerate launch -m cpo_cli train RECIPE` runs it on several processes:
printing, logging and writing happen on the main process only.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpo_cli import console
from cpo_cli.engine.checkpoint import (
    TrainerState,
    latest_checkpoint,
    load_checkpoint,
    load_model_weights,
    register_state_hooks,
    resolve_resume,
    rotate_checkpoints,
    save_checkpoint,
    save_model,
)
from cpo_cli.engine.flops import StepFlops
from cpo_cli.engine.metric_means import MetricMeans
from cpo_cli.engine.schedule import Plan, Schedule, build_plan, with_window_pairs
from cpo_cli.errors import EXIT_INTERRUPTED, CpoError, RecipeError
from cpo_cli.metric_names import EVAL_METRICS, TRAIN_ONLY_METRICS

if TYPE_CHECKING:
    from cpo_cli.recipe.loader import LoadedRecipe
    from cpo_cli.recipe.schema import PeftSection, Recipe
    from cpo_cli.recipe.training import TrainingConfig

DEFAULT_OUTPUT_DIR = "trainer_output"
SUMMARY_FILE = "train_results.json"
#: order of the columns in log lines and the final table
METRIC_ORDER = (*EVAL_METRICS, *TRAIN_ONLY_METRICS)


class TrainingInterrupted(CpoError):
    """Ctrl-C during training: nothing half-written is kept; the message names the last
    complete checkpoint."""

    exit_code = EXIT_INTERRUPTED


@dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    #: the last logged training metrics and the last evaluation, merged
    metrics: dict[str, float] = field(default_factory=dict)
    best_checkpoint: str | None = None
    wall_time: float = 0.0


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


# --------------------------------------------------------------------------- setup


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
    # the schedule counts optimizer steps; it is stepped by hand, once per optimizer step
    scheduler = build_scheduler(optimizer, training, plan.total_steps)
    accelerator.register_for_checkpointing(scheduler)
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
    )


def _redacted_dict(recipe: Recipe) -> dict[str, Any]:
    from cpo_cli.recipe.dump import redact

    return redact(recipe)


# --------------------------------------------------------------------------- the loop


def train(loaded: LoadedRecipe, *, show_progress: bool = True) -> TrainResult:
    """Train the recipe's model; return where the result is and its final metrics (started
    again with a smaller micro-batch on out-of-memory under `auto_find_batch_size`)."""
    from cpo_cli.engine.auto_batch import run_with_auto_batch

    return run_with_auto_batch(lambda attempt: _train(attempt, show_progress), loaded)


def _train(loaded: LoadedRecipe, show_progress: bool) -> TrainResult:
    from cpo_cli.engine.progress import build_progress
    from cpo_cli.engine.tracking import build_tracker, check_backends

    training = loaded.recipe.training
    check_backends(training.report_to)  # a missing tracker package fails before the model loads
    started = time.perf_counter()
    try:
        run = build_run(loaded)
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            "interrupted before training started; nothing was saved"
        ) from None
    accelerator = run.accelerator
    state = TrainerState()
    resume_from = resolve_resume(training.resume_from_checkpoint, run.output_dir)
    if resume_from is not None:
        state = load_checkpoint(accelerator, run.model, resume_from)
        console.info(f"resumed from {resume_from} (step {state.global_step})")
    elif latest_checkpoint(run.output_dir) is not None:
        console.warn(
            f"{run.output_dir} already holds checkpoints of an earlier run; this run "
            "starts from scratch and may replace them (to continue that run instead, "
            "set training.resume_from_checkpoint=last)"
        )
    if accelerator.is_main_process:
        run.output_dir.mkdir(parents=True, exist_ok=True)
    tracker = build_tracker(
        training,
        run.output_dir,
        is_main_process=accelerator.is_main_process,
        config=run.config_for_trackers,
        resume_step=state.global_step if resume_from is not None else None,
    )
    progress = build_progress(
        run.plan.total_steps,
        state.global_step,
        enabled=show_progress and accelerator.is_main_process,
        disable_tqdm=training.disable_tqdm,
    )
    try:
        with progress:
            last_metrics = _train_loop(run, state, tracker, progress)
        final = _finish(run, state, last_metrics)
    except KeyboardInterrupt:
        raise _interrupted(run, state) from None
    finally:
        tracker.close()
    best = state.best_checkpoint if training.load_best_model_at_end else None
    final_result = TrainResult(
        output_dir=run.output_dir,
        global_step=state.global_step,
        metrics=final,
        best_checkpoint=best,
        wall_time=time.perf_counter() - started,
    )
    _write_summary(run, final_result)
    return final_result


def _train_loop(run: Run, state: TrainerState, tracker: Any, progress: Any) -> dict[str, float]:
    """The optimisation itself. Returns the last logged training metrics and evaluation."""
    import torch

    from cpo_cli.engine.objective import batch_loss_and_metrics

    accelerator, model, training, plan = run.accelerator, run.model, run.training, run.plan
    schedule = Schedule(plan, training, has_eval=run.eval_loader is not None)
    window_means = MetricMeans()  # metrics since the last log
    window_flops = StepFlops(model, accelerator.device.type, _precision(training))
    last: dict[str, float] = {}
    # tokens/s counts training time only: evaluation and saving pause the clock
    window_tokens, window_seconds, tick = 0, 0.0, time.perf_counter()

    if schedule.eval_on_start and state.global_step == 0:
        last.update(_evaluate(run, state, tracker, progress))

    model.train()
    while state.global_step < plan.total_steps and state.epoch < plan.num_epochs:
        run.sampler.use_epoch(state.epoch)
        loader = run.train_loader
        if state.batches_done_in_epoch:
            loader = accelerator.skip_first_batches(loader, state.batches_done_in_epoch)
        batches_left = plan.batches_per_epoch - state.batches_done_in_epoch
        window_size = min(plan.accumulation, batches_left)
        in_window = 0

        tick = time.perf_counter()
        for batch, sizes, window_pairs in with_window_pairs(
            loader, plan.accumulation, batches_left
        ):
            # ---- one micro-batch: forward + backward, gradients accumulate ------------------
            with accelerator.accumulate(model):
                loss, metrics = batch_loss_and_metrics(model, batch, training)
                # accelerate divides by `accumulation`; each micro-batch counts by its share of
                # the window's pairs (equal shares: 1 / window size, as in a short last window)
                accelerator.backward(loss * (plan.accumulation * sizes["pairs"] / window_pairs))
            in_window += 1
            state.batches_done_in_epoch += 1
            window_tokens += sizes["tokens"]
            window_flops.add(sizes)
            # logging_nan_inf_filter: a non-finite loss is left out of the logged means
            keep = torch.isfinite(loss.detach()) if training.logging_nan_inf_filter else None
            window_means.add(
                {"loss": loss.detach(), **metrics}, weight=float(sizes["pairs"]), keep=keep
            )
            if in_window < window_size:
                continue
            if not accelerator.sync_gradients:
                raise RuntimeError(
                    "internal error: gradient accumulation out of step with "
                    "accelerate (please report)"
                )

            # ---- one optimizer step -------------------------------------------------------
            max_norm = training.max_grad_norm if training.max_grad_norm > 0 else math.inf
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
            learning_rate = run.scheduler.get_last_lr()[0]
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
            state.global_step += 1
            epoch_float = state.epoch + state.batches_done_in_epoch / plan.batches_per_epoch
            batches_left = plan.batches_per_epoch - state.batches_done_in_epoch
            window_size, in_window = min(plan.accumulation, batches_left), 0
            end_of_epoch = batches_left == 0
            progress.advance(state.global_step)
            window_seconds += time.perf_counter() - tick

            # ---- log, evaluate, save: each on its own schedule ------------------------------
            if schedule.should_log(state.global_step, end_of_epoch):
                elapsed = max(window_seconds, 1e-9)
                logged = {
                    **window_means.means(accelerator),
                    "learning_rate": float(learning_rate),
                    "grad_norm": float(grad_norm),
                    "epoch": round(epoch_float, 4),
                    "tokens/s": _tokens_per_second(accelerator, window_tokens, elapsed),
                    **window_flops.report(elapsed),
                }
                _log(run, state, tracker, progress, logged)
                last.update(logged)
                window_means.reset()
                window_tokens, window_seconds = 0, 0.0
            if schedule.should_evaluate(state.global_step, end_of_epoch, epoch_float):
                last.update(_evaluate(run, state, tracker, progress))
            if schedule.should_save(state.global_step, end_of_epoch, state):
                _save(run, state)
            tick = time.perf_counter()
            if state.global_step >= plan.total_steps:
                break
        if state.global_step >= plan.total_steps:
            break  # done; the epoch counters stay where a resume would continue
        # the epoch's data ran out: the next one starts from its first batch
        state.epoch += 1
        state.batches_done_in_epoch = 0
    if schedule.evaluate_at_end(state):
        last.update(_evaluate(run, state, tracker, progress))
    return last


def _precision(training: Any) -> str:
    return "bf16" if training.bf16 else "fp16" if training.fp16 else "fp32"


def _tokens_per_second(accelerator: Any, tokens: int, seconds: float) -> float:
    """Tokens of every process per second of wall time."""
    means = MetricMeans()
    means.add({"tokens": float(tokens)}, weight=1.0)
    total = means.means(accelerator)["tokens"] * accelerator.num_processes
    return round(total / seconds, 1)


def ordered_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Metrics in the order users know from TRL (eval ones likewise), anything else after."""
    order = [*METRIC_ORDER, *(f"eval_{k}" for k in METRIC_ORDER)]
    ordered = {k: metrics[k] for k in order if k in metrics}
    ordered.update({k: v for k, v in metrics.items() if k not in ordered})
    return ordered


def _log(
    run: Run, state: TrainerState, tracker: Any, progress: Any, metrics: dict[str, float]
) -> None:
    ordered = ordered_metrics(metrics)
    tracker.log(ordered, state.global_step)
    state.log_history.append({"step": state.global_step, **ordered})
    progress.show_metrics(state.global_step, ordered)


def _evaluate(run: Run, state: TrainerState, tracker: Any, progress: Any) -> dict[str, float]:
    from cpo_cli.engine.evaluate import evaluate_model

    metrics = ordered_metrics(
        evaluate_model(run.model, run.eval_loader, run.training, run.accelerator)
    )
    tracker.log(metrics, state.global_step)
    state.log_history.append({"step": state.global_step, **metrics})
    progress.show_metrics(state.global_step, metrics)
    _track_best(run, state, metrics)
    state.last_eval_step = state.global_step
    if run.training.generate_during_eval and run.accelerator.is_main_process:
        _generate(run, state, progress)
    return metrics


def _generate(run: Run, state: TrainerState, progress: Any) -> None:
    from cpo_cli.engine.generate import generate_samples, samples_table, write_samples

    model = run.accelerator.unwrap_model(run.model, keep_torch_compile=False)
    samples = generate_samples(
        model,
        run.tokenizer,
        run.eval_dataset,
        run.training,
        is_encoder_decoder=run.is_encoder_decoder,
    )
    write_samples(samples, run.output_dir / "eval_samples.jsonl", state.global_step)
    progress.print(samples_table(samples, state.global_step))


def best_metric_name(training: TrainingConfig) -> str:
    """`metric_for_best_model` with its `eval_` prefix; None means `eval_loss` (the schema's
    meaning of None)."""
    name = "loss" if training.metric_for_best_model is None else training.metric_for_best_model
    return name if name.startswith("eval_") else f"eval_{name}"


def _greater_is_better(training: TrainingConfig) -> bool:
    if training.greater_is_better is not None:
        return training.greater_is_better
    return not best_metric_name(training).endswith("loss")


def _track_best(run: Run, state: TrainerState, metrics: dict[str, float]) -> None:
    """Remember the best evaluation; the checkpoint saved at this step becomes the best one."""
    # the recipe rules accept only names evaluation reports, and it reports every one of them
    value = metrics[best_metric_name(run.training)]
    better = state.best_metric is None or (
        value > state.best_metric if _greater_is_better(run.training) else value < state.best_metric
    )
    if better:
        state.best_metric = value
        state.best_step = state.global_step


def _save(run: Run, state: TrainerState) -> None:
    from cpo_cli.engine.checkpoint import PREFIX

    if state.best_step == state.global_step:
        state.best_checkpoint = str(run.output_dir / f"{PREFIX}{state.global_step}")
    path = save_checkpoint(
        run.accelerator,
        run.model,
        run.tokenizer,
        state,
        run.output_dir,
        recipe_yaml=run.recipe_yaml,
        save_only_model=run.training.save_only_model,
    )
    if run.accelerator.is_main_process:
        rotate_checkpoints(
            run.output_dir, run.training.save_total_limit, keep=state.best_checkpoint
        )
    console.info(f"saved {path}")
    if run.training.push_to_hub and run.accelerator.is_main_process:
        # per hub_strategy; a failed push mid-run only warns (the checkpoint is safe on disk)
        from cpo_cli import __version__, hub

        hub.push_checkpoint(path, run.training, cpo_version=__version__)


# --------------------------------------------------------------------------- the end


def _finish(run: Run, state: TrainerState, last: dict[str, float]) -> dict[str, float]:
    """Best weights back if asked, then the final model, tokenizer and recipe in output_dir."""
    accelerator = run.accelerator
    accelerator.wait_for_everyone()
    if run.training.load_best_model_at_end and state.best_checkpoint:
        load_model_weights(
            accelerator.unwrap_model(run.model, keep_torch_compile=False),
            Path(state.best_checkpoint),
        )
        console.info(
            f"loaded the best model ({best_metric_name(run.training)}="
            f"{state.best_metric:.4g}) from {state.best_checkpoint}"
        )
    model = run.model
    if run.peft is not None and run.peft.merge_at_end:
        model = accelerator.unwrap_model(run.model, keep_torch_compile=False).merge_and_unload()
    # written beside the output first and moved in file by file, so an interrupt never leaves
    # a half-written model.safetensors in output_dir
    staging = run.output_dir / ".tmp-final"
    save_model(accelerator, model, run.tokenizer, staging)
    if accelerator.is_main_process:
        (staging / "recipe.yaml").write_text(run.recipe_yaml, encoding="utf-8")
        for file in sorted(staging.iterdir()):
            os.replace(file, run.output_dir / file.name)
        staging.rmdir()
    accelerator.wait_for_everyone()
    return ordered_metrics(last)


def _write_summary(run: Run, result: TrainResult) -> None:
    if not run.accelerator.is_main_process:
        return
    summary = {
        "global_step": result.global_step,
        "wall_time_s": round(result.wall_time, 2),
        "best_checkpoint": result.best_checkpoint,
        "metrics": result.metrics,
    }
    (run.output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2), encoding="utf-8")


def _interrupted(run: Run, state: TrainerState) -> TrainingInterrupted:
    import shutil

    if run.accelerator.is_main_process and run.output_dir.is_dir():
        for partial in run.output_dir.glob(".tmp-*"):
            shutil.rmtree(partial, ignore_errors=True)
    last = latest_checkpoint(run.output_dir)
    where = (
        f"last complete checkpoint: {last} (resume with training.resume_from_checkpoint=last)"
        if last
        else "no checkpoint was saved"
    )
    return TrainingInterrupted(f"training interrupted at step {state.global_step}; {where}")
