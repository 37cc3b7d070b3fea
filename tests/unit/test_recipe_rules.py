"""Cross-field rules and field status, checked when a recipe loads."""

from __future__ import annotations

import pytest

from cpo_cli.errors import RecipeError
from cpo_cli.recipe import TrainingConfig, field_status, load_recipe_dict
from cpo_cli.recipe.status import HONOURED, NOT_APPLICABLE


def load(training: dict[str, object], **sections: object) -> tuple[list[str], list[str]]:
    """(errors, warnings) of a recipe with this training section."""
    data: dict[str, object] = {"model": {"name_or_path": "m"}, "training": training, **sections}
    try:
        loaded = load_recipe_dict(data)
    except RecipeError as err:
        return err.problems, []
    return [], loaded.warnings


EVAL = {"data": {"train": {"path": "t.jsonl"}, "eval": {"path": "e.jsonl"}}}


def test_prompt_length_must_be_below_max_length() -> None:
    errors, _ = load({"max_length": 256, "max_prompt_length": 256})
    assert errors == [
        "training.max_prompt_length (256) must be below training.max_length (256), or no "
        "answer token fits; lower max_prompt_length or raise max_length"
    ]
    assert load({"max_length": None, "max_prompt_length": 4096}) == ([], [])


def test_alpha_applies_to_every_loss() -> None:
    """AlphaPO's reward transform is not alphapo-only (TRL applies it to every loss)."""
    assert load({"loss_type": "simpo", "alpha": 0.5, "cpo_alpha": 0.0}) == ([], [])


def test_cpo_alpha_with_alphapo_warns() -> None:
    errors, warnings = load({"loss_type": "alphapo", "alpha": 0.25, "cpo_alpha": 0.5})
    assert errors == []
    assert len(warnings) == 1 and "training.cpo_alpha 0.5 is ignored" in warnings[0]


@pytest.mark.parametrize(
    ("loss", "knob", "value", "readers"),
    [
        ("sigmoid", "simpo_gamma", 1.0, "simpo, alphapo"),
        ("hinge", "label_smoothing", 0.1, "sigmoid, simpo, alphapo"),
        ("ipo", "label_smoothing", 0.1, "sigmoid, simpo, alphapo"),
    ],
)
def test_knob_for_a_loss_that_ignores_it(loss: str, knob: str, value: float, readers: str) -> None:
    errors, warnings = load({"loss_type": loss, knob: value, "cpo_alpha": 0.0})
    assert errors == []
    assert warnings == [
        f"training.{knob} is set ({value}) but training.loss_type '{loss}' ignores it; it is "
        f"read by: {readers}"
    ]


def test_knob_for_a_loss_that_reads_it_is_quiet() -> None:
    assert load({"loss_type": "simpo", "simpo_gamma": 1.0, "cpo_alpha": 0}) == ([], [])
    assert load({"loss_type": "sigmoid", "label_smoothing": 0.1}) == ([], [])


def test_simpo_with_default_cpo_alpha_is_cpo_simpo() -> None:
    _, warnings = load({"loss_type": "simpo"})
    assert len(warnings) == 1
    assert "is CPO-SimPO" in warnings[0] and "training.cpo_alpha: 0" in warnings[0]
    assert load({"loss_type": "simpo", "cpo_alpha": 1.0}) == ([], [])  # explicit: quiet


def test_alphapo_needs_alpha() -> None:
    _, warnings = load({"loss_type": "alphapo"})
    assert any("plain SimPO" in w for w in warnings)
    assert load({"loss_type": "alphapo", "alpha": 0.25}) == ([], [])


def test_eval_strategy_needs_eval_data() -> None:
    errors, _ = load({"eval_strategy": "steps"})
    assert errors == [
        "training.eval_strategy is 'steps' but data.eval is not set; add a data.eval source or "
        "set training.eval_strategy: no"
    ]
    assert load({"eval_strategy": "steps"}, **EVAL) == ([], [])


def test_load_best_model_at_end_needs_matching_strategies() -> None:
    errors, _ = load(
        {"load_best_model_at_end": True, "eval_strategy": "epoch", "save_strategy": "steps"},
        **EVAL,
    )
    assert errors == [
        "training.load_best_model_at_end needs training.save_strategy ('steps') to match "
        "training.eval_strategy ('epoch')"
    ]
    errors, _ = load(
        {"load_best_model_at_end": True, "eval_strategy": "steps", "eval_steps": 30},
        **EVAL,
    )
    assert errors == [
        "training.load_best_model_at_end needs training.save_steps (500) to be a multiple of "
        "training.eval_steps (30)"
    ]
    errors, _ = load({"load_best_model_at_end": True})
    assert any("needs training.eval_strategy" in e for e in errors)
    ok = {"load_best_model_at_end": True, "eval_strategy": "steps", "eval_steps": 50}
    assert load(ok, **EVAL) == ([], [])


def test_fp16_and_bf16() -> None:
    errors, _ = load({"fp16": True, "bf16": True})
    assert errors == ["training.fp16 and training.bf16 are both true; choose one"]


def test_metric_for_best_model() -> None:
    errors, _ = load({"metric_for_best_model": "eval_rewards/acuracies"})
    assert len(errors) == 1
    assert errors[0].startswith("training.metric_for_best_model: got 'eval_rewards/acuracies'")
    assert errors[0].endswith("did you mean 'eval_rewards/accuracies'?")
    assert load({"metric_for_best_model": "rewards/margins"}) == ([], [])


def test_save_strategy_best_needs_a_metric_and_eval() -> None:
    errors, _ = load({"save_strategy": "best"})
    assert len(errors) == 2


def test_push_to_hub_needs_a_repo_id() -> None:
    errors, _ = load({"push_to_hub": True})
    assert errors == [
        "training.push_to_hub is true but training.hub_model_id is not set; set it to user/name "
        "(or org/name)"
    ]


def test_steps_must_be_whole_above_one() -> None:
    errors, _ = load({"save_steps": 2.5})
    assert errors and errors[0].startswith("training.save_steps: got 2.5")
    assert load({"save_steps": 0.25}) == ([], [])


def test_range_constraints() -> None:
    errors, _ = load({"warmup_ratio": 1.5, "save_steps": 0, "per_device_train_batch_size": 0})
    assert errors == [
        "training.per_device_train_batch_size: got 0; expected a value >= 1",
        "training.warmup_ratio: got 1.5; expected a value <= 1",
        "training.save_steps: got 0; expected a value > 0",
    ]


def test_unsupported_optimizer_is_refused() -> None:
    errors, _ = load({"optim": "lomo"})
    assert errors and errors[0].startswith("training.optim: got 'lomo'; the cpo engine builds")
    assert load({"optim": "sgd"}) == ([], [])


def test_dataloader_workers() -> None:
    errors, _ = load({"dataloader_prefetch_factor": 2})
    assert errors == [
        "training.dataloader_prefetch_factor needs training.dataloader_num_workers > 0"
    ]


def test_model_init_kwargs_must_not_duplicate_the_model_section() -> None:
    errors, _ = load({"model_init_kwargs": {"torch_dtype": "bfloat16"}})
    assert errors == [
        "training.model_init_kwargs.torch_dtype: set model.dtype instead (the model section "
        "is the one place for it)"
    ]


def test_interval_without_its_strategy_warns() -> None:
    _, warnings = load({"eval_steps": 10, "eval_strategy": "no"})
    assert warnings == [
        "training.eval_steps is set but training.eval_strategy is 'no', so it has no effect"
    ]


# --- field status ------------------------------------------------------------------------


def test_every_training_field_has_exactly_one_status() -> None:
    fields = set(TrainingConfig.model_fields)
    assert set(HONOURED) | set(NOT_APPLICABLE) == fields
    assert set(HONOURED) & set(NOT_APPLICABLE) == set()
    assert len(HONOURED) == len(set(HONOURED))
    assert all(s.reason for s in NOT_APPLICABLE.values())


@pytest.mark.parametrize(
    "name",
    ["learning_rate", "bf16", "optim", "neftune_noise_alpha", "hub_token", "alpha", "eval_steps"],
)
def test_brief_fields_are_honoured(name: str) -> None:
    assert field_status(name).honoured


def test_not_applicable_field_set_warns() -> None:
    errors, warnings = load({"use_ipex": True})
    assert errors == []
    assert warnings == [
        "training.use_ipex: not applicable in cpo (Intel extension for PyTorch is not "
        "supported); the value true is ignored"
    ]


def test_not_applicable_field_at_default_is_quiet() -> None:
    assert load({"use_ipex": False, "fsdp": "", "debug": []}) == ([], [])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("per_gpu_train_batch_size", 4),
        ("no_cuda", True),
        ("accelerator_config", {"split_batches": True}),
        ("label_smoothing_factor", 0.1),
        ("push_to_hub_token", "hf_x"),
    ],
)
def test_dangerous_not_applicable_fields_are_errors(field: str, value: object) -> None:
    errors, _ = load({field: value})
    assert len(errors) == 1 and errors[0].startswith(f"training.{field}: not applicable in cpo")
    assert errors[0].endswith("remove it from the recipe")
    assert "hf_x" not in errors[0]


def test_plateau_schedule_is_refused() -> None:
    errors, _ = load({"lr_scheduler_type": "reduce_lr_on_plateau"})
    assert len(errors) == 1 and "not supported by the cpo engine" in errors[0]


def test_unsupported_tracker_is_refused() -> None:
    errors, _ = load({"report_to": ["wandb", "mlflow"]})
    assert errors == [
        "training.report_to: 'mlflow' not supported by the cpo engine; choose from tensorboard, "
        "wandb, all or none (metrics.jsonl is always written)"
    ]
    assert load({"report_to": "all"}) == ([], [])


def test_bare_no_is_the_no_strategy(tmp_path) -> None:
    """`training.save_strategy=no` on the command line (YAML reads it as false) means 'no'."""
    from cpo_cli.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("model: {name_or_path: m}\ndata: {train: {path: d.jsonl}}\n")
    loaded = load_recipe(path, ["training.save_strategy=no", "training.logging_strategy=no"])
    assert loaded.recipe.training.save_strategy == "no"
    assert loaded.recipe.training.logging_strategy == "no"


def test_optim_args_are_checked_when_the_recipe_loads() -> None:
    """Not after the model has loaded: a bad `k=v` string is a recipe problem like any other."""
    errors, _ = load({"optim": "sgd", "optim_args": "momentum=0.9,nesterov"})
    assert errors == [
        "training.optim_args: got 'momentum=0.9,nesterov'; expected key=value pairs, e.g. "
        "'momentum=0.9,nesterov=True' ('nesterov' is not key=value)"
    ]
    assert load({"optim": "sgd", "optim_args": "momentum=0.9,nesterov=True"}) == ([], [])


def test_lr_scheduler_kwargs_are_parsed_when_the_recipe_loads() -> None:
    errors, _ = load({"lr_scheduler_kwargs": "{min_lr: 0.1}"})
    assert len(errors) == 1 and errors[0].startswith("training.lr_scheduler_kwargs: got")
    loaded = load_recipe_dict(
        {"model": {"name_or_path": "m"}, "training": {"lr_scheduler_kwargs": '{"min_lr": 0.1}'}}
    )
    assert loaded.recipe.training.lr_scheduler_kwargs == {"min_lr": 0.1}


def test_unknown_builtin_model_is_refused_when_the_recipe_loads() -> None:
    data = {"model": {"name_or_path": "builtin:smollm3"}}
    try:
        load_recipe_dict(data)
    except RecipeError as err:
        assert err.problems == [
            "model.name_or_path: 'builtin:smollm3' is not a builtin model; builtin models: "
            "builtin:smollm2-135m-instruct"
        ]
    else:
        raise AssertionError("an unknown builtin model was accepted")
    assert load_recipe_dict({"model": {"name_or_path": "builtin:SmolLM2-135M-Instruct"}})
