"""The counters a resumed run needs besides tensors, saved as `trainer_state.json` in every
checkpoint, and read back only after checking every field (a hand-edited or damaged file is an
error naming the field, never a silent restart at step 0)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cpo_cli.errors import CheckpointError, first_line


@dataclass
class TrainerState:
    """Everything besides tensors that a resumed run needs to carry on where it stopped."""

    #: optimizer steps taken (a skipped non-finite step counts: its data was used)
    global_step: int = 0
    #: the epoch in progress (0-based) and how many of its micro-batches are done
    epoch: int = 0
    batches_done_in_epoch: int = 0
    #: optimizer steps whose update was skipped because the loss or gradient norm was NaN/inf
    skipped_steps: int = 0
    best_metric: float | None = None
    #: the optimizer step of the best evaluation, and the checkpoint saved at that step
    best_step: int | None = None
    best_checkpoint: str | None = None
    last_eval_step: int | None = None
    #: every logged record, in order (also in metrics.jsonl)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    #: the shape of the run that saved it, to resume the data position exactly elsewhere
    #: (None in checkpoints written before cpo recorded them)
    num_processes: int | None = None
    per_device_train_batch_size: int | None = None
    batches_per_epoch: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_file(cls, path: Path) -> TrainerState:
        """Read and check a saved state; every problem is a `CheckpointError` naming the file."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise CheckpointError(f"cannot read {path}: {first_line(exc)}") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
        problems = _state_problems(data)
        if problems:
            raise CheckpointError(f"{path}: {'; '.join(problems)}")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


_COUNTERS = ("global_step", "epoch", "batches_done_in_epoch", "skipped_steps")
_SHAPE = ("num_processes", "per_device_train_batch_size", "batches_per_epoch")


def _state_problems(data: dict[str, Any]) -> list[str]:
    problems = []
    for name in ("global_step", "epoch", "batches_done_in_epoch"):
        if name not in data:
            problems.append(f"{name} is missing")
    for name in _COUNTERS:
        value = data.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            problems.append(f"{name} must be a whole number >= 0, got {value!r}")
    for name in ("best_step", "last_eval_step"):
        value = data.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append(f"{name} must be a whole number or null, got {value!r}")
    for name in _SHAPE:
        value = data.get(name)
        whole = isinstance(value, int) and not isinstance(value, bool)
        if value is not None and not (whole and value >= 1):
            problems.append(f"{name} must be a whole number >= 1 or null, got {value!r}")
    best = data.get("best_metric")
    if best is not None and (isinstance(best, bool) or not isinstance(best, (int, float))):
        problems.append(f"best_metric must be a number or null, got {best!r}")
    if data.get("best_checkpoint") is not None and not isinstance(data["best_checkpoint"], str):
        problems.append("best_checkpoint must be a path or null")
    if not isinstance(data.get("log_history", []), list):
        problems.append("log_history must be a list")
    return problems
