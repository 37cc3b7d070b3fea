"""Where a resumed run continues in its data, also with another number of processes or another
per-device batch.

The row order of an epoch is a function of (seed, epoch) alone (`EpochSampler`), and accelerate
gives process i the batches i, i + N, i + 2N, ... of that order. So after `done` micro-batches
per process, N processes with batches of B have consumed exactly the first `done · N · B` rows
of the epoch. A run resumed with N' processes and batches of B' continues at the same row when
`done · N · B` is a multiple of `N' · B'`; otherwise no whole number of its batches ends there,
and it refuses rather than train some rows twice or skip some.
"""

from __future__ import annotations

from dataclasses import dataclass

from cpo_cli.errors import CheckpointError


@dataclass(frozen=True)
class Position:
    #: micro-batches per process already done in the epoch, counted at the new shape
    batches_done_in_epoch: int
    #: what changed, for one warning line (empty when nothing did)
    change: str = ""


def resume_position(
    *,
    batches_done: int,
    saved_processes: int | None,
    saved_batch: int | None,
    saved_batches_per_epoch: int | None,
    processes: int,
    batch: int,
    batches_per_epoch: int,
    sharded_state: str | None = None,
    token_budget: bool = False,
) -> Position:
    """The data position at the new shape. `sharded_state` names a training state that is
    split per process and cannot be re-split (DeepSpeed): a new process count is refused.
    `token_budget`: micro-batches hold different numbers of pairs (`max_tokens_per_batch`), so
    no other shape continues at a known row: refused."""
    if saved_processes is None or saved_batch is None:
        # a checkpoint from before cpo recorded its shape: assume the same shape
        return Position(batches_done)
    if (saved_processes, saved_batch) == (processes, batch):
        return Position(batches_done)
    was = f"{saved_processes} process{'es' if saved_processes != 1 else ''} x {saved_batch}"
    now = f"{processes} process{'es' if processes != 1 else ''} x {batch}"
    if token_budget:
        raise CheckpointError(
            f"the checkpoint was saved by {was} pairs per micro-batch and this run has {now}: "
            "with training.max_tokens_per_batch micro-batches hold different numbers of pairs, "
            "so no other shape continues at the same pair",
            hint=f"resume with the original {was} (processes x per_device_train_batch_size)",
        )
    if sharded_state and saved_processes != processes:
        raise CheckpointError(
            f"the checkpoint was saved by {saved_processes} processes and this run has "
            f"{processes}: {sharded_state} state is split per process and cannot be resumed on "
            "another number of processes",
            hint=f"resume with {saved_processes} processes, or start from the checkpoint's "
            "model folder (model.name_or_path) without resume_from_checkpoint",
        )
    if saved_batches_per_epoch is not None and batches_done >= saved_batches_per_epoch:
        position = batches_per_epoch  # the epoch was complete: the next one starts afresh
        rows_done = None
    else:
        rows_done = batches_done * saved_processes * saved_batch
        per_batch = processes * batch
        if rows_done % per_batch:
            fits = _shapes_that_fit(rows_done)
            raise CheckpointError(
                f"the checkpoint was saved by {was} pairs per micro-batch, {rows_done} pairs "
                f"into its epoch; with {now} pairs no whole number of micro-batches ends there, "
                "so resuming would train some pairs twice or skip some",
                hint=f"resume with processes x per_device_train_batch_size dividing "
                f"{rows_done} (e.g. {fits}), or with the original {was}",
            )
        position = rows_done // per_batch
    where = f"{rows_done} pairs into the epoch" if rows_done is not None else "at an epoch end"
    change = (
        f"resuming with {now} pairs per micro-batch; the checkpoint was saved with {was}. The "
        f"data position is kept exact ({where}), but each optimizer step now sees "
        f"{processes * batch} instead of {saved_processes * saved_batch} pairs per "
        "micro-batch round, the schedule counts steps at the new size, and random states of "
        "processes the checkpoint did not have start fresh: the run will not match an "
        "uninterrupted one"
    )
    return Position(position, change)


def _shapes_that_fit(rows: int) -> str:
    found = [n for n in (1, 2, 4, 8, 16, 32, 64) if rows % n == 0]
    return ", ".join(str(n) for n in found[:4]) if found else "1"
