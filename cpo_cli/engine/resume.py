"""Where a run starts: afresh, or from the checkpoint `resume_from_checkpoint` names, agreed on
by every process, with the data position carried over to this run's shape
(`cpo_cli.engine.data_position`)."""

from __future__ import annotations

from pathlib import Path

from cpo_cli import console
from cpo_cli.engine.build import Run
from cpo_cli.engine.checkpoint import (
    STATE_FILE,
    TrainerState,
    has_optimizer_state,
    load_checkpoint,
    resolve_resume,
)


def resume_state(run: Run) -> tuple[TrainerState, Path | None]:
    """The counters to start from: fresh, or those of the checkpoint `resume_from_checkpoint`
    names, with the data position carried over to this run's number of processes and batch.
    Every process must resolve the same checkpoint (with `save_on_each_node`, each reads its
    own machine's disk); a problem on any process stops all of them."""
    from cpo_cli.engine.data_position import resume_position
    from cpo_cli.engine.ranks import on_every_process, same_on_every_process

    accelerator, training = run.accelerator, run.training
    with on_every_process(accelerator):
        resume = resolve_resume(training.resume_from_checkpoint, run.output_dir)
        found = None
        if resume.path is not None:
            found = (resume.path.name, has_optimizer_state(resume.path))
    same_on_every_process(accelerator, found, "the checkpoint to resume from")
    for warning in resume.warnings:
        console.warn(warning)
    if resume.path is None:
        return TrainerState(), None
    with on_every_process(accelerator):
        saved = TrainerState.from_file(resume.path / STATE_FILE)
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
            token_budget=training.max_tokens_per_batch is not None,
        )
    state = load_checkpoint(accelerator, run.model, resume.path, scheduler=run.scheduler)
    state.batches_done_in_epoch = position.batches_done_in_epoch
    if position.change:
        console.warn(position.change)
    console.info(f"resumed from {resume.path} (step {state.global_step})")
    return state, resume.path
