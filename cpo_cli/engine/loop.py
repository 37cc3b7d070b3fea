"""`cpo train`: setup in small `build_*` functions, then one training function that reads top to
bottom. Micro-batches (forward + backward) and optimizer steps are separate, named counters.

Built on `accelerate.Accelerator` (device placement, mixed precision, gradient accumulation,
process groups), so `accelerate launch -m cpo_cli train RECIPE` runs it on several processes:
printing, logging and writing happen on the main process only.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpo_cli import console
from cpo_cli.engine.checkpoint import (
    STATE_FILE,
    TrainerState,
    check_checkpoint_files,
    has_optimizer_state,
    latest_checkpoint,
    load_best_weights,
    load_checkpoint,
    register_state_hooks,
    resolve_resume,
    rotate_checkpoints,
    save_checkpoint,
    save_model,
)
from cpo_cli.engine.distributed import LauncherRequest, RecipeRequest, RunShape
from cpo_cli.engine.metric_means import MetricMeans
from cpo_cli.engine.schedule import Plan, Schedule, build_plan
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
    scope = "job"  # Ctrl-C reaches every process of the job; the main process reports it


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
    #: what runs (processes, machines, mode, batch arithmetic): the start-up line
    shape: RunShape | None = None
    #: what the launcher and the recipe asked for, to say what was not granted
    launcher: LauncherRequest | None = None
    request: RecipeRequest | None = None
    #: forwards each process runs per evaluation (FSDP/ZeRO-3: the same on every process)
    eval_batches_on_every_process: int | None = None


# --------------------------------------------------------------------------- setup


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
    from cpo_cli.engine.distributed import (
        build_accelerator,
        count_machines,
        reshard,
        run_shape,
    )
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
        # the schedule counts optimizer steps; it is stepped by hand, once per optimizer step
        scheduler = build_scheduler(optimizer, training, plan.total_steps)
    accelerator.register_for_checkpointing(scheduler)
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
            f"training.generate_during_eval is not supported under {shape.mode} (generation "
            "would run on the main process alone while the parameters are spread over every "
            "process); run `cpo eval --generate` on the saved model instead"
        )
    if training.load_best_model_at_end and training.save_only_model:
        problems.append(
            f"training.load_best_model_at_end with training.save_only_model under "
            f"{shape.mode}: the best model is reloaded from its checkpoint's sharded state, "
            "which save_only_model leaves out; drop one of them"
        )
    if problems:
        raise RecipeError("recipe", problems)


def _redacted_dict(recipe: Recipe) -> dict[str, Any]:
    from cpo_cli.recipe.dump import redact

    return redact(recipe)


# --------------------------------------------------------------------------- the loop


def train(loaded: LoadedRecipe, *, show_progress: bool = True) -> TrainResult:
    """Train the recipe's model; return where the result is and its final metrics."""
    from cpo_cli.engine.distributed import launch_warnings
    from cpo_cli.engine.progress import build_progress
    from cpo_cli.engine.ranks import on_every_process
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
    assert run.shape is not None and run.launcher is not None and run.request is not None
    console.info(run.shape.line())
    for warning in launch_warnings(run.shape, run.launcher, run.request):
        console.warn(warning)
    with on_every_process(accelerator):
        check_sharded_run(run)
    state, resume_from = _resume(run)
    if resume_from is None and latest_checkpoint(run.output_dir) is not None:
        console.warn(
            f"{run.output_dir} already holds checkpoints of an earlier run; this run "
            "starts from scratch and may replace them (to continue that run instead, "
            "set training.resume_from_checkpoint=last)"
        )
    if _writes_files(run):
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


def _writes_files(run: Run) -> bool:
    from cpo_cli.engine.ranks import writes_files

    return writes_files(run.accelerator, run.training.save_on_each_node)


def _resume(run: Run) -> tuple[TrainerState, Path | None]:
    """The counters to start from: fresh, or those of the checkpoint `resume_from_checkpoint`
    names, with the data position carried over to this run's number of processes and batch.
    Every process must resolve the same checkpoint (with `save_on_each_node`, each reads its
    own machine's disk)."""
    from cpo_cli.engine.data_position import resume_position
    from cpo_cli.engine.ranks import on_every_process, same_on_every_process

    accelerator, training = run.accelerator, run.training
    with on_every_process(accelerator):
        resume_from = resolve_resume(training.resume_from_checkpoint, run.output_dir)
        found = None
        if resume_from is not None:
            check_checkpoint_files(resume_from, accelerator)
            found = (resume_from.name, has_optimizer_state(resume_from))
    same_on_every_process(accelerator, found, "the checkpoint to resume from")
    if resume_from is None:
        return TrainerState(), None
    with on_every_process(accelerator):
        saved = TrainerState.from_file(resume_from / STATE_FILE)
        assert run.shape is not None
        position = resume_position(
            batches_done=saved.batches_done_in_epoch,
            saved_processes=saved.num_processes,
            saved_batch=saved.per_device_train_batch_size,
            saved_batches_per_epoch=saved.batches_per_epoch,
            processes=accelerator.num_processes,
            batch=training.per_device_train_batch_size,
            batches_per_epoch=run.plan.batches_per_epoch,
            sharded_state="DeepSpeed" if run.shape.mode.startswith("DeepSpeed") else None,
        )
    state = load_checkpoint(accelerator, run.model, resume_from)
    state.batches_done_in_epoch = position.batches_done_in_epoch
    if position.change:
        console.warn(position.change)
    console.info(f"resumed from {resume_from} (step {state.global_step})")
    return state, resume_from


# --------------------------------------------------------------------------- the loop


def _train_loop(run: Run, state: TrainerState, tracker: Any, progress: Any) -> dict[str, float]:
    """The optimisation itself. Returns the last logged training metrics and evaluation."""
    import torch

    from cpo_cli.engine.objective import (
        batch_loss_and_metrics,
        nll_step_denominator,
        token_weighted_nll,
    )

    accelerator, model, training, plan = run.accelerator, run.model, run.training, run.plan
    schedule = Schedule(plan, training, has_eval=run.eval_loader is not None)
    window_means = MetricMeans()  # metrics since the last log
    last: dict[str, float] = {}
    by_tokens = token_weighted_nll(training)
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

        tick = time.perf_counter()
        # one window = the micro-batches of one optimizer step, fetched before the first
        # forward so that the NLL term can be weighted by the step's chosen tokens
        for window in _step_windows(loader, plan.accumulation, batches_left):
            nll_count = None
            if by_tokens:
                step_tokens = _sum_over_processes(
                    accelerator, sum(sizes["chosen_tokens"] for _, sizes in window)
                )
                nll_count = nll_step_denominator(
                    step_tokens, len(window), accelerator.num_processes
                )
            for index, (batch, sizes) in enumerate(window):
                # ---- one micro-batch: forward + backward, gradients accumulate -------------
                syncs = index == len(window) - 1
                with _gradient_sync(accelerator, model, syncs):
                    loss, metrics = batch_loss_and_metrics(
                        model, batch, training, nll_token_count=nll_count
                    )
                    # accelerate divides by `accumulation`; a short window by its own size
                    accelerator.backward(loss * (plan.accumulation / len(window)))
                state.batches_done_in_epoch += 1
                window_tokens += sizes["tokens"]
                # logging_nan_inf_filter: a non-finite loss is left out of the logged means
                keep = torch.isfinite(loss.detach()) if training.logging_nan_inf_filter else None
                if by_tokens:  # nll_loss: token-weighted, like the term it reports
                    nll = metrics.pop("nll_loss")
                    window_means.add(
                        {"nll_loss": nll}, weight=float(sizes["chosen_tokens"]), keep=keep
                    )
                window_means.add(
                    {"loss": loss.detach(), **metrics}, weight=float(sizes["pairs"]), keep=keep
                )
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
            end_of_epoch = state.batches_done_in_epoch >= plan.batches_per_epoch
            progress.advance(state.global_step)
            window_seconds += time.perf_counter() - tick

            # ---- log, evaluate, save: each on its own schedule ------------------------------
            if schedule.should_log(state.global_step, end_of_epoch):
                elapsed = max(window_seconds, 1e-9)
                logged = {
                    **window_means.means(accelerator),
                    "learning_rate": float(learning_rate),
                    "grad_norm": _as_float(grad_norm),
                    "epoch": round(epoch_float, 4),
                    "tokens/s": _tokens_per_second(accelerator, window_tokens, elapsed),
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


def _step_windows(
    loader: Any, accumulation: int, batches_left: int
) -> Iterator[list[tuple[Any, dict[str, int]]]]:
    """The epoch's remaining micro-batches in groups of `accumulation` (the last may be
    shorter): one group per optimizer step."""
    batches = iter(loader)
    while batches_left > 0:
        window = list(itertools.islice(batches, min(accumulation, batches_left)))
        if not window:
            return
        batches_left -= len(window)
        yield window


def _gradient_sync(accelerator: Any, model: Any, syncs: bool) -> Any:
    """Gradients are synchronised (DDP all-reduce, FSDP reduce-scatter, DeepSpeed's optimizer
    step) on the last micro-batch of a step only. Set here, as HF Trainer sets it, because the
    window was fetched ahead and accelerate's own counter sees the loader's end too early."""
    from contextlib import nullcontext

    from accelerate.utils import DistributedType

    accelerator.gradient_state._set_sync_gradients(syncs)
    if syncs or accelerator.distributed_type == DistributedType.DEEPSPEED:
        return nullcontext()  # DeepSpeed reads the flag in its backward instead
    return accelerator.no_sync(model)


def _sum_over_processes(accelerator: Any, value: int) -> int:
    if accelerator.num_processes <= 1:
        return value
    import torch

    total = accelerator.reduce(torch.tensor([value], device=accelerator.device), "sum")
    return int(total.item())


def _as_float(value: Any) -> float:
    """A grad norm as a float (FSDP2 returns a replicated DTensor)."""
    if hasattr(value, "full_tensor"):
        value = value.full_tensor()
    return float(value)


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
    from cpo_cli.engine.distributed import reshard
    from cpo_cli.engine.evaluate import evaluate_model

    metrics = ordered_metrics(
        evaluate_model(
            run.model,
            run.eval_loader,
            run.training,
            run.accelerator,
            batches_on_every_process=run.eval_batches_on_every_process,
        )
    )
    reshard(run.model)  # forwards without a backward
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
    # the shape of this run, so that a resume elsewhere keeps the data position exact
    state.num_processes = run.accelerator.num_processes
    state.per_device_train_batch_size = run.training.per_device_train_batch_size
    state.batches_per_epoch = run.plan.batches_per_epoch
    path = save_checkpoint(
        run.accelerator,
        run.model,
        run.tokenizer,
        state,
        run.output_dir,
        recipe_yaml=run.recipe_yaml,
        save_only_model=run.training.save_only_model,
        save_on_each_node=run.training.save_on_each_node,
    )
    if _writes_files(run):
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
        load_best_weights(accelerator, run.model, Path(state.best_checkpoint))
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
    save_model(
        accelerator,
        model,
        run.tokenizer,
        staging,
        save_on_each_node=run.training.save_on_each_node,
    )
    if _writes_files(run):
        (staging / "recipe.yaml").write_text(run.recipe_yaml, encoding="utf-8")
        for file in sorted(staging.iterdir()):
            os.replace(file, run.output_dir / file.name)
        staging.rmdir()
    accelerator.wait_for_everyone()
    return ordered_metrics(last)


def _write_summary(run: Run, result: TrainResult) -> None:
    if not _writes_files(run):
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

    if _writes_files(run) and run.output_dir.is_dir():
        for partial in run.output_dir.glob(".tmp-*"):
            shutil.rmtree(partial, ignore_errors=True)
    last = latest_checkpoint(run.output_dir)
    where = (
        f"last complete checkpoint: {last} (resume with training.resume_from_checkpoint=last)"
        if last
        else "no checkpoint was saved"
    )
    return TrainingInterrupted(f"training interrupted at step {state.global_step}; {where}")
