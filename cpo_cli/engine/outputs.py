"""The output folder of a run: claimed and locked at the start (`cpo_cli.engine.outdir`), the
final model moved in at the end, and `train_results.json`, which says how the run ended."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpo_cli import console
from cpo_cli.engine.build import Run
from cpo_cli.engine.checkpoint import TrainerState, last_good_message, load_best_weights
from cpo_cli.engine.guard import nonfinite_weights
from cpo_cli.engine.merge_check import merge_at_end
from cpo_cli.engine.outdir import RunLock
from cpo_cli.errors import TrainingDiverged

if TYPE_CHECKING:
    from cpo_cli.recipe.training import TrainingConfig

SUMMARY_FILE = "train_results.json"


def claim_output_dir(output_dir: Path, training: TrainingConfig) -> RunLock | None:
    """Lock the output folder for this run and check that cpo may write there (main process
    only, or each machine's first process with `save_on_each_node`; the others never write
    into it). Returns the lock to release at the end."""
    from cpo_cli.engine.checkpoint import recover_interrupted_replace
    from cpo_cli.engine.outdir import check_output_dir, claim, owned_names, remove_partials

    if training.save_on_each_node:
        writes = console.is_local_main_process()
    else:
        writes = console.is_main_process()
    if not writes:
        return None
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(output_dir)
    try:
        took_over = lock.acquire()
        notes = check_output_dir(output_dir, overwrite_output_dir=training.overwrite_output_dir)
        recover_interrupted_replace(output_dir)
        remove_partials(output_dir)
        claim(output_dir, [])
        # an earlier run's summary must not pass for this run's if this one fails early
        if SUMMARY_FILE in owned_names(output_dir):
            (output_dir / SUMMARY_FILE).unlink(missing_ok=True)
    except BaseException:
        lock.release()
        raise
    for note in ([took_over] if took_over else []) + notes:
        console.warn(note)
    return lock


def writes_files(run: Run) -> bool:
    """Whether this process writes into the output folder: the main process, or with
    `save_on_each_node` the first process of each machine (onto its own disk)."""
    from cpo_cli.engine.ranks import writes_files as writer

    return writer(run.accelerator, run.training.save_on_each_node)


def claim_files(run: Run, names: list[str]) -> None:
    """Record files as cpo's in the output folder's marker before writing them."""
    from cpo_cli.engine.outdir import claim

    if writes_files(run):
        claim(run.output_dir, names)


def refuse_nonfinite_weights(run: Run, state: TrainerState, what: str) -> None:
    """Never write a NaN/inf weight: stop instead, naming the step and the last good save."""
    bad = nonfinite_weights(run.model, run.accelerator)
    if not bad:
        return
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    raise TrainingDiverged(
        f"training diverged: after step {state.global_step} the weights hold NaN/inf "
        f"({bad[0]}{more}), so {what} was not written; {last_good_message(run.output_dir)}",
        hint="lower training.learning_rate (or add warmup) and keep training.max_grad_norm "
        "clipping on; resume from the last good checkpoint with "
        "training.resume_from_checkpoint=last",
    )


def finish(run: Run, state: TrainerState, best_metric_name: str) -> None:
    """Best weights back if asked, then the final model, tokenizer and recipe in output_dir;
    never a non-finite one."""
    from cpo_cli.engine.checkpoint import save_model
    from cpo_cli.engine.disk import disk_full_as_error
    from cpo_cli.engine.outdir import create_partial

    accelerator = run.accelerator
    accelerator.wait_for_everyone()
    if run.training.load_best_model_at_end and state.best_checkpoint:
        load_best_weights(accelerator, run.model, Path(state.best_checkpoint))
        console.info(
            f"loaded the best model ({best_metric_name}="
            f"{state.best_metric:.4g}) from {state.best_checkpoint}"
        )
    refuse_nonfinite_weights(run, state, "the final model")
    model, refused_merge = run.model, None
    if run.peft is not None and run.peft.merge_at_end:  # merged and checked (engine.merge_check)
        model, refused_merge = merge_at_end(run)
    # written beside the output first and moved in file by file, so an interrupt never leaves
    # a half-written model.safetensors in output_dir
    staging = run.output_dir / ".tmp-final"
    kept = lambda: last_good_message(run.output_dir)  # noqa: E731
    writer = writes_files(run)
    with disk_full_as_error("the final model", run.output_dir, staging=staging, kept=kept):
        if writer:
            create_partial(staging)
        accelerator.wait_for_everyone()
        save_model(
            accelerator,
            model,
            run.tokenizer,
            staging,
            save_on_each_node=run.training.save_on_each_node,
        )
        if writer:
            (staging / "recipe.yaml").write_text(run.recipe_yaml, encoding="utf-8")
            _move_final(run.output_dir, staging)
    accelerator.wait_for_everyone()
    if refused_merge is not None:
        raise refused_merge  # the adapter is saved as it is; the merged weights were not


def _move_final(output_dir: Path, staging: Path) -> None:
    """Move the staged final model in, file by file, replacing only files cpo wrote."""
    from cpo_cli.engine.manifest import PARTIAL_MARK
    from cpo_cli.engine.outdir import claim, owned_names
    from cpo_cli.engine.preemption import critical_section
    from cpo_cli.errors import OutputDirError

    files = sorted(f for f in staging.iterdir() if f.name != PARTIAL_MARK)
    owned = owned_names(output_dir)
    foreign = [f.name for f in files if (output_dir / f.name).exists() and f.name not in owned]
    if foreign:
        raise OutputDirError(
            f"{output_dir} holds {', '.join(foreign[:5])}, which cpo did not write; the final "
            f"model was not moved in and is in {staging}",
            hint="move those files away and the final model's files out of that folder (the "
            "next run in this output_dir removes it)",
        )
    claim(output_dir, [f.name for f in files])
    with critical_section():
        for file in files:
            os.replace(file, output_dir / file.name)
        (staging / PARTIAL_MARK).unlink()
        staging.rmdir()


def write_summary(run: Run, summary: dict[str, Any]) -> None:
    """`train_results.json` (where the final model is written)."""
    if not writes_files(run):
        return
    from cpo_cli.engine.tracking import json_number

    claim_files(run, [SUMMARY_FILE])
    summary = {**summary, "metrics": {k: json_number(v) for k, v in summary["metrics"].items()}}
    text = json.dumps(summary, indent=2)
    (run.output_dir / SUMMARY_FILE).write_text(text, encoding="utf-8")
