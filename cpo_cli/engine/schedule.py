"""How long a run is and when it logs, evaluates and saves: pure arithmetic on the recipe, kept
out of the loop so the loop reads as the training it does."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cpo_cli.errors import RecipeError

if TYPE_CHECKING:
    from cpo_cli.engine.checkpoint import TrainerState
    from cpo_cli.recipe.training import TrainingConfig


@dataclass(frozen=True)
class Plan:
    """Run length in this process's micro-batches and in optimizer steps."""

    batches_per_epoch: int
    accumulation: int
    steps_per_epoch: int
    total_steps: int
    num_epochs: int


def build_plan(batches_per_epoch: int, training: TrainingConfig) -> Plan:
    """`max_steps` (> 0) wins over `num_train_epochs`, which may be fractional (0.5 = half an
    epoch). The last accumulation window of an epoch may be short: it still makes a step."""
    if batches_per_epoch <= 0:
        raise RecipeError(
            "recipe",
            [
                "data.train: no complete batch of pairs (fewer rows than "
                "training.per_device_train_batch_size with dataloader_drop_last, "
                "or an empty dataset)"
            ],
        )
    accumulation = training.gradient_accumulation_steps
    steps_per_epoch = math.ceil(batches_per_epoch / accumulation)
    if training.max_steps > 0:
        total = training.max_steps
        epochs = math.ceil(total / steps_per_epoch)
    else:
        total = max(1, math.ceil(training.num_train_epochs * steps_per_epoch))
        epochs = max(1, math.ceil(training.num_train_epochs))
    return Plan(batches_per_epoch, accumulation, steps_per_epoch, total, epochs)


def every(value: float | None, total_steps: int) -> int:
    """`*_steps` as a step count: below 1 it is a share of the total steps (HF convention)."""
    if value is None or value <= 0:
        return 0
    if value < 1:
        return max(1, math.ceil(value * total_steps))
    return int(value)


class Schedule:
    """When to log, evaluate and save, from the `*_strategy` / `*_steps` fields."""

    def __init__(self, plan: Plan, training: TrainingConfig, *, has_eval: bool) -> None:
        self.plan = plan
        self.training = training
        self.has_eval = has_eval
        self.log_every = every(training.logging_steps, plan.total_steps)
        eval_steps = (
            training.eval_steps if training.eval_steps is not None else training.logging_steps
        )
        self.eval_every = every(eval_steps, plan.total_steps)
        self.save_every = every(training.save_steps, plan.total_steps)
        self.eval_on_start = training.eval_on_start and has_eval

    def should_log(self, step: int, end_of_epoch: bool) -> bool:
        strategy = self.training.logging_strategy
        if strategy == "no":
            return False
        if step == 1 and self.training.logging_first_step:
            return True
        if step == self.plan.total_steps:  # the final numbers are always logged
            return True
        if strategy == "epoch":
            return end_of_epoch
        return self.log_every > 0 and step % self.log_every == 0

    def should_evaluate(self, step: int, end_of_epoch: bool, epoch: float) -> bool:
        strategy = self.training.eval_strategy
        if not self.has_eval or strategy == "no":
            return False
        # eval_delay None: no delay
        delay = 0.0 if self.training.eval_delay is None else self.training.eval_delay
        if strategy == "epoch":
            return end_of_epoch and epoch >= delay
        return self.eval_every > 0 and step % self.eval_every == 0 and step >= delay

    def should_save(self, step: int, end_of_epoch: bool, state: TrainerState) -> bool:
        strategy = self.training.save_strategy
        if strategy == "no":
            return False
        if strategy == "epoch":
            return end_of_epoch
        if strategy == "best":
            return state.best_step == step
        return self.save_every > 0 and step % self.save_every == 0

    def evaluate_at_end(self, state: TrainerState) -> bool:
        """One last evaluation when evaluation is on and the final step was not evaluated."""
        return (
            self.has_eval
            and self.training.eval_strategy != "no"
            and state.last_eval_step != state.global_step
        )


def step_windows(
    loader: Iterable[tuple[Any, dict[str, int]]], accumulation: int, batches_left: int
) -> Iterator[list[tuple[Any, dict[str, int]]]]:
    """The epoch's remaining (batch, sizes) micro-batches in groups of `accumulation`, one group
    per optimizer step (the last may be shorter; `batches_left`: batches still to come in this
    epoch).

    A window is fetched before its first micro-batch runs (as the HF Trainer does to count a
    step's tokens) so that each micro-batch's loss can be weighted for the whole step
    (`cpo_cli.engine.objective.StepTotals`): by its share of the step's pairs, and the NLL term
    by the step's chosen tokens."""
    iterator = iter(loader)
    while batches_left > 0:
        window = list(itertools.islice(iterator, min(accumulation, batches_left)))
        if not window:
            return
        batches_left -= len(window)
        yield window
