"""`cpo train`: setup in small `build_*` functions (`cpo_cli.engine.build`), then one training
function that reads top to bottom. Micro-batches (forward + backward) and optimizer steps are
separate, named counters; each optimizer step reads the device once (`cpo_cli.engine.guard`).

Built on `accelerate.Accelerator` (device placement, mixed precision, gradient accumulation,
process groups), so `accelerate launch -m cpo_cli train RECIPE` runs it on several processes:
printing, logging and writing happen on the main process only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpo_cli import console
from cpo_cli.engine.accumulation import gradient_sync, step_totals
from cpo_cli.engine.build import Run, build_accelerator, build_run, output_dir_of
from cpo_cli.engine.checkpoint import (
    TrainerState,
    last_good_message,
    latest_checkpoint,
    rotate_checkpoints,
    save_checkpoint,
)
from cpo_cli.engine.flops import StepFlops
from cpo_cli.engine.guard import NonFiniteStreak, check_step, diverged_error, skipped_message
from cpo_cli.engine.metric_means import MetricMeans
from cpo_cli.engine.outdir import foreign_checkpoints_ahead
from cpo_cli.engine.outputs import (
    claim_files,
    claim_output_dir,
    finish,
    refuse_nonfinite_weights,
    write_summary,
    writes_files,
)
from cpo_cli.engine.preemption import StopNow, StopSignals, stopped_error
from cpo_cli.engine.resume import resume_state
from cpo_cli.engine.schedule import Schedule, step_windows
from cpo_cli.errors import (
    EXIT_INTERRUPTED,
    TrainingDiverged,
    TrainingInterrupted,
)
from cpo_cli.metric_names import EVAL_METRICS, TRAIN_ONLY_METRICS

if TYPE_CHECKING:
    from cpo_cli.recipe.loader import LoadedRecipe
    from cpo_cli.recipe.training import TrainingConfig

__all__ = ["TrainResult", "TrainingInterrupted", "build_accelerator", "output_dir_of", "train"]

#: order of the columns in log lines and the final table
METRIC_ORDER = (*EVAL_METRICS, *TRAIN_ONLY_METRICS)


@dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    #: the last optimizer step's own metrics (unfiltered) and the last evaluation, merged
    metrics: dict[str, float] = field(default_factory=dict)
    best_checkpoint: str | None = None
    wall_time: float = 0.0
    #: optimizer steps whose update was skipped (non-finite loss or gradient norm)
    skipped_steps: int = 0


@dataclass
class LastValues:
    """What the final summary reports, kept as the loop goes without reading the device: the
    last optimizer step's metric sums (read once, at the end), its host-side values, and the
    last evaluation."""

    step_means: MetricMeans | None = None
    step_values: dict[str, float] = field(default_factory=dict)
    evaluation: dict[str, float] = field(default_factory=dict)

    def metrics(self, accelerator: Any, *, device: bool = True) -> dict[str, float]:
        """The summary's metrics; `device=False` skips the one device read (after a failure)."""
        means = {}
        if device and self.step_means is not None:
            means = self.step_means.means(accelerator)
        return ordered_metrics({**means, **self.step_values, **self.evaluation})


# --------------------------------------------------------------------------- the loop


def train(loaded: LoadedRecipe, *, show_progress: bool = True) -> TrainResult:
    """Train the recipe's model; return where the result is and its final metrics (started
    again with a smaller micro-batch on out-of-memory under `auto_find_batch_size`)."""
    from cpo_cli.engine.auto_batch import run_with_auto_batch
    from cpo_cli.engine.disk import disk_full_as_error
    from cpo_cli.engine.tracking import check_backends

    training = loaded.recipe.training
    check_backends(training.report_to)  # a missing tracker package fails before anything else
    started = time.perf_counter()
    output_dir = output_dir_of(training)
    signals = StopSignals(checkpoint_first=training.enable_jit_checkpoint)
    with signals.installed():
        lock = None
        try:
            lock = claim_output_dir(output_dir, training)
            kept = lambda: last_good_message(output_dir)  # noqa: E731
            with disk_full_as_error("the run's outputs", output_dir, kept=kept):
                return run_with_auto_batch(
                    lambda attempt: _train(attempt, signals, started, show_progress=show_progress),
                    loaded,
                )
        except StopNow as exc:  # before training started (the loop turns its own into errors)
            raise TrainingInterrupted(
                f"stopped by {exc} before training started; nothing was saved",
                exit_code=_exit_code(exc),
            ) from None
        finally:
            if lock is not None:
                lock.release()


def _train(
    loaded: LoadedRecipe, signals: StopSignals, started: float, *, show_progress: bool
) -> TrainResult:
    from cpo_cli.engine.build import check_sharded_run
    from cpo_cli.engine.distributed import (
        cpu_half_precision_support,
        cpu_precision_warning,
        launch_warnings,
    )
    from cpo_cli.engine.progress import build_progress
    from cpo_cli.engine.ranks import on_every_process
    from cpo_cli.engine.tracking import build_tracker, tracker_outputs

    training = loaded.recipe.training
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
    if accelerator.device.type == "cpu" and run.shape.mixed_precision in ("bf16", "fp16"):
        slow = cpu_precision_warning(run.shape.mixed_precision, cpu_half_precision_support())
        if slow:
            console.warn(slow)
    with on_every_process(accelerator):
        check_sharded_run(run)
    state, resume_from = resume_state(run)
    if resume_from is None:
        if str(training.resume_from_checkpoint).strip().lower() == "auto":
            console.info(f"no checkpoint to resume from in {run.output_dir}; starting afresh")
        if latest_checkpoint(run.output_dir) is not None:
            console.warn(
                f"{run.output_dir} already holds checkpoints of an earlier run; this run "
                "starts from scratch and may replace them (to continue that run instead, "
                "set training.resume_from_checkpoint=last)"
            )
    if writes_files(run):  # now that the steps this run may save at are known
        foreign_checkpoints_ahead(run.output_dir, state.global_step, run.plan.total_steps)
    claim_files(run, ["metrics.jsonl", *tracker_outputs(training, run.output_dir)])
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
    last = LastValues()
    status = "failed"
    try:
        signals.armed = True  # from here a first signal waits for the step to finish
        with progress:
            _train_loop(run, state, tracker, progress, signals, last)
        finish(run, state, best_metric_name(training))
        status = "completed"
    except (KeyboardInterrupt, StopNow) as exc:
        status = "interrupted"
        raise _interrupted(run, state, exc) from None
    except TrainingDiverged:
        status = "diverged"
        raise
    except TrainingInterrupted:
        status = "stopped"
        raise
    finally:
        tracker.close()
        # every process reached a completed, diverged or stopped end at the same step, so the
        # device values may be reduced; after a failure only the host-side ones are used
        agreed = status in ("completed", "diverged", "stopped")
        result = TrainResult(
            output_dir=run.output_dir,
            global_step=state.global_step,
            metrics=last.metrics(accelerator if agreed else None, device=agreed),
            best_checkpoint=state.best_checkpoint if training.load_best_model_at_end else None,
            wall_time=time.perf_counter() - started,
            skipped_steps=state.skipped_steps,
        )
        try:
            write_summary(run, _summary(result, status))
        except OSError:
            if status == "completed":
                raise  # a failed run's own error matters more than its summary
    if signals.received is not None:
        console.warn(f"{signals.name} arrived after the last step; the run finished normally")
    return result


def _summary(result: TrainResult, status: str) -> dict[str, Any]:
    """`train_results.json`: how the run ended, the last step's own values, skipped steps."""
    return {
        "status": status,
        "global_step": result.global_step,
        "skipped_steps": result.skipped_steps,
        "wall_time_s": round(result.wall_time, 2),
        "best_checkpoint": result.best_checkpoint,
        "metrics": result.metrics,
    }


def _exit_code(exc: BaseException) -> int:
    from cpo_cli.engine.preemption import EXIT_CODES

    if isinstance(exc, StopNow):
        return EXIT_CODES.get(exc.signum, EXIT_INTERRUPTED)
    return EXIT_INTERRUPTED


def _train_loop(
    run: Run,
    state: TrainerState,
    tracker: Any,
    progress: Any,
    signals: StopSignals,
    last: LastValues,
) -> None:
    """The optimisation itself; `last` collects what the final summary reports."""
    import torch

    from cpo_cli.engine.objective import batch_loss_and_metrics, token_weighted_nll

    accelerator, model, training, plan = run.accelerator, run.model, run.training, run.plan
    schedule = Schedule(plan, training, has_eval=run.eval_loader is not None)
    window_means = MetricMeans()  # metrics since the last log, the loss apart:
    window_loss = MetricMeans()  # logging_nan_inf_filter leaves non-finite losses out of it
    step_means = MetricMeans()  # this optimizer step's metrics, unfiltered (the summary)
    step_loss: Any = None  # this step's summed micro-batch losses, on the device
    streak = NonFiniteStreak(training.max_nonfinite_steps)
    window_flops = StepFlops(model, accelerator.device.type, _precision(training))
    by_tokens = token_weighted_nll(training)
    # tokens/s counts training time only: evaluation and saving pause the clock
    window_tokens, window_seconds, tick = 0, 0.0, time.perf_counter()

    if schedule.eval_on_start and state.global_step == 0:
        last.evaluation = _evaluate(run, state, tracker, progress)

    model.train()
    while state.global_step < plan.total_steps and state.epoch < plan.num_epochs:
        run.sampler.use_epoch(state.epoch)
        loader = run.train_loader
        if state.batches_done_in_epoch:
            loader = accelerator.skip_first_batches(loader, state.batches_done_in_epoch)
        batches_left = plan.batches_per_epoch - state.batches_done_in_epoch

        tick = time.perf_counter()
        # one window = the micro-batches of one optimizer step, fetched before the first
        # forward: each micro-batch's loss counts by its share of the step's pairs, the NLL
        # term by the step's chosen tokens (over every process)
        for window in step_windows(loader, plan.accumulation, batches_left):
            totals = step_totals(accelerator, window, plan.accumulation)
            for index, (batch, sizes) in enumerate(window):
                # ---- one micro-batch: forward + backward, gradients accumulate -------------
                nll_count = totals.nll_denominator(sizes["pairs"]) if by_tokens else None
                with gradient_sync(accelerator, model, syncs=index == len(window) - 1):
                    loss, metrics = batch_loss_and_metrics(
                        model, batch, training, nll_token_count=nll_count
                    )
                    accelerator.backward(loss * totals.weight(sizes["pairs"]))
                state.batches_done_in_epoch += 1
                window_tokens += sizes["tokens"]
                window_flops.add(sizes)
                # nothing is read back here: sums and the NaN filter stay on the device
                loss = loss.detach()
                step_loss = loss if step_loss is None else step_loss + loss
                pairs = float(sizes["pairs"])
                keep = torch.isfinite(loss) if training.logging_nan_inf_filter else None
                window_loss.add({"loss": loss}, weight=pairs, keep=keep)
                if by_tokens:  # nll_loss: token-weighted, like the term it reports
                    nll = {"nll_loss": metrics.pop("nll_loss")}
                    window_means.add(nll, weight=float(sizes["chosen_tokens"]))
                    step_means.add(nll, weight=float(sizes["chosen_tokens"]))
                window_means.add(metrics, weight=pairs)
                step_means.add({"loss": loss, **metrics}, weight=pairs)
            if not accelerator.sync_gradients:
                raise RuntimeError(
                    "internal error: gradient accumulation out of step with "
                    "accelerate (please report)"
                )

            # ---- one optimizer step -------------------------------------------------------
            max_norm = training.max_grad_norm if training.max_grad_norm > 0 else math.inf
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
            learning_rate = run.scheduler.get_last_lr()[0]
            # the step's one host sync: is it finite, and has a stop signal arrived?
            check = check_step(accelerator, step_loss, grad_norm, received=signals.received)
            # with fp16 loss scaling an overflowing gradient is the scaler's business
            finite = check.loss_finite and (check.grad_finite or accelerator.scaler is not None)
            if finite:
                run.optimizer.step()
            elif accelerator.scaler is not None:
                accelerator.scaler.update()  # unscale_ ran in clip_grad_norm_; close the step
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
            state.global_step += 1
            streak.update(state.global_step, finite)
            if not finite:
                state.skipped_steps += 1
                progress.print(f"warning: {skipped_message(state.global_step, check, streak)}")
            epoch_float = state.epoch + state.batches_done_in_epoch / plan.batches_per_epoch
            end_of_epoch = state.batches_done_in_epoch >= plan.batches_per_epoch
            progress.advance(state.global_step)
            window_seconds += time.perf_counter() - tick
            step_values = {"learning_rate": float(learning_rate), "epoch": round(epoch_float, 4)}
            if check.grad_norm is not None:
                step_values["grad_norm"] = check.grad_norm
            last.step_means, last.step_values = step_means, step_values
            step_means, step_loss = MetricMeans(), None

            # ---- log, evaluate, save: each on its own schedule ------------------------------
            if schedule.should_log(state.global_step, end_of_epoch) or streak.exhausted:
                elapsed = max(window_seconds, 1e-9)
                logged = {
                    **window_loss.means(accelerator),
                    **window_means.means(accelerator),
                    **step_values,
                    "tokens/s": _tokens_per_second(accelerator, window_tokens, elapsed),
                    **window_flops.report(elapsed),
                }
                _log(run, state, tracker, progress, logged)
                window_loss.reset()
                window_means.reset()
                window_tokens, window_seconds = 0, 0.0
            if streak.exhausted:
                raise diverged_error(streak, last_good_message(run.output_dir))
            finished = state.global_step >= plan.total_steps
            # a stop signal: no new evaluation; the checkpoint below is what matters
            stop = check.stop and not finished
            if not stop and schedule.should_evaluate(state.global_step, end_of_epoch, epoch_float):
                last.evaluation = _evaluate(run, state, tracker, progress)
                # one process alone may look at its own flag; several agree at the next step
                stop = accelerator.num_processes == 1 and signals.received is not None
                stop = stop and not finished
            if stop or schedule.should_save(state.global_step, end_of_epoch, state):
                saved = _save(run, state, push=not stop)  # a stop has no time for uploads
                if stop:
                    raise stopped_error(
                        check.stop_signal or signals.received,
                        f"after step {state.global_step} of {plan.total_steps}",
                        saved,
                        resume=f"{run.command} training.resume_from_checkpoint=last",
                    )
            tick = time.perf_counter()
            if finished:
                break
        if state.global_step >= plan.total_steps:
            break  # done; the epoch counters stay where a resume would continue
        # the epoch's data ran out: the next one starts from its first batch
        state.epoch += 1
        state.batches_done_in_epoch = 0
    if schedule.evaluate_at_end(state):
        last.evaluation = _evaluate(run, state, tracker, progress)


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
    if run.training.generate_during_eval:  # every process generates its share
        metrics.update(_generate(run, state, progress))
    tracker.log(metrics, state.global_step)
    state.log_history.append({"step": state.global_step, **metrics})
    progress.show_metrics(state.global_step, metrics)
    _track_best(run, state, metrics)
    state.last_eval_step = state.global_step
    if run.training.generate_during_eval:
        _warn_on_collapse(state, tracker)
    return metrics


def _generate(run: Run, state: TrainerState, progress: Any) -> dict[str, float]:
    """Sample answers (written to eval_samples.jsonl, a few shown) and their task metrics."""
    from cpo_cli.engine.generate import generate_samples, samples_table, write_samples
    from cpo_cli.gen_metrics import generation_metrics

    model = run.accelerator.unwrap_model(run.model, keep_torch_compile=False)
    samples = generate_samples(
        model,
        run.tokenizer,
        run.eval_dataset,
        run.training,
        is_encoder_decoder=run.is_encoder_decoder,
    )
    claim_files(run, ["eval_samples.jsonl"])
    if run.accelerator.is_main_process:
        write_samples(samples, run.output_dir / "eval_samples.jsonl", state.global_step)
        progress.print(samples_table(samples, state.global_step))
    return generation_metrics([s.answer() for s in samples])


def _warn_on_collapse(state: TrainerState, tracker: Any) -> None:
    from cpo_cli.engine.collapse import collapse_warning

    warning = collapse_warning(state.log_history)
    if warning is not None:
        console.warn(warning.message())
        tracker.warning("collapse", warning.message(), state.global_step)


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


def _save(run: Run, state: TrainerState, *, push: bool = True) -> Path:
    from cpo_cli.engine.checkpoint import PREFIX

    refuse_nonfinite_weights(run, state, f"{PREFIX}{state.global_step}")
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
        scheduler=run.scheduler,
        save_on_each_node=run.training.save_on_each_node,
    )
    if writes_files(run):
        rotate_checkpoints(
            run.output_dir, run.training.save_total_limit, keep=state.best_checkpoint
        )
    console.info(f"saved {path}")
    if push and run.training.push_to_hub and run.accelerator.is_main_process:
        # per hub_strategy; a failed push mid-run only warns (the checkpoint is safe on disk)
        from cpo_cli import __version__, hub

        hub.push_checkpoint(path, run.training, cpo_version=__version__)
    return path


def _interrupted(run: Run, state: TrainerState, exc: BaseException) -> TrainingInterrupted:
    from cpo_cli.engine.outdir import remove_partials

    if writes_files(run):
        remove_partials(run.output_dir)
    last = latest_checkpoint(run.output_dir)
    where = (
        f"last complete checkpoint: {last} (resume with training.resume_from_checkpoint=last)"
        if last
        else "no checkpoint was saved"
    )
    cause = f"stopped by {exc}" if isinstance(exc, StopNow) else "training interrupted"
    return TrainingInterrupted(
        f"{cause} at step {state.global_step}; {where}", exit_code=_exit_code(exc)
    )
