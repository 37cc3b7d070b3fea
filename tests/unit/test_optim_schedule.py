"""Run length and the log / eval / save schedule (pure arithmetic on the recipe)."""

from __future__ import annotations

from typing import Any

import pytest

from cpo_cli.engine.checkpoint import TrainerState
from cpo_cli.engine.schedule import Schedule, build_plan, every
from cpo_cli.errors import RecipeError
from cpo_cli.recipe import TrainingConfig


def cfg(**kwargs: Any) -> TrainingConfig:
    return TrainingConfig(**kwargs)


def test_plan_from_epochs_counts_a_short_last_window() -> None:
    plan = build_plan(10, cfg(gradient_accumulation_steps=3, num_train_epochs=2))
    assert (plan.steps_per_epoch, plan.total_steps, plan.num_epochs) == (4, 8, 2)


def test_fractional_epochs_and_max_steps() -> None:
    assert build_plan(10, cfg(num_train_epochs=0.5)).total_steps == 5
    plan = build_plan(10, cfg(max_steps=25, num_train_epochs=1))
    assert (plan.total_steps, plan.num_epochs) == (25, 3)


def test_empty_training_data_is_a_recipe_error() -> None:
    with pytest.raises(RecipeError):
        build_plan(0, cfg())


def test_steps_below_one_are_a_share_of_the_run() -> None:
    assert every(0.25, 10) == 3 and every(5, 10) == 5 and every(0, 10) == 0


def schedule(total: int = 10, has_eval: bool = True, **kwargs: Any) -> Schedule:
    training = cfg(max_steps=total, **kwargs)
    return Schedule(build_plan(total, training), training, has_eval=has_eval)


def test_logging_steps_first_step_and_the_final_step() -> None:
    s = schedule(logging_steps=4, logging_first_step=True)
    assert [n for n in range(1, 11) if s.should_log(n, False)] == [1, 4, 8, 10]
    assert not any(schedule(logging_strategy="no").should_log(n, False) for n in range(1, 11))


def test_eval_steps_default_to_logging_steps_and_respect_the_delay() -> None:
    s = schedule(eval_strategy="steps", logging_steps=2, eval_delay=5)
    assert [n for n in range(1, 11) if s.should_evaluate(n, False, 0.0)] == [6, 8, 10]
    assert not schedule(eval_strategy="steps", has_eval=False).should_evaluate(10, False, 1.0)


def test_epoch_strategies() -> None:
    s = schedule(eval_strategy="epoch", save_strategy="epoch", logging_strategy="epoch")
    state = TrainerState(best_step=None)
    assert s.should_evaluate(3, True, 1.0) and not s.should_evaluate(3, False, 0.3)
    assert s.should_save(3, True, state) and not s.should_save(3, False, state)
    assert s.should_log(3, True) and not s.should_log(3, False)


def test_save_best_saves_only_at_a_new_best() -> None:
    s = schedule(save_strategy="best", eval_strategy="steps", eval_steps=1)
    assert s.should_save(4, False, TrainerState(best_step=4))
    assert not s.should_save(5, False, TrainerState(best_step=4))


def test_final_evaluation_only_when_the_last_step_was_not_evaluated() -> None:
    s = schedule(eval_strategy="steps", eval_steps=3)
    assert s.evaluate_at_end(TrainerState(last_eval_step=9, global_step=10))
    assert not s.evaluate_at_end(TrainerState(last_eval_step=10, global_step=10))
