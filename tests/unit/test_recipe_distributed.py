"""The distributed fields (`fsdp`, `fsdp_config`, `deepspeed`, `ddp_*`) as HF Trainer users
write them: parsed into requests, every mistake reported when the recipe loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cpo_cli.errors import RecipeError
from cpo_cli.recipe import TrainingConfig, load_recipe_dict
from cpo_cli.recipe.distributed import FsdpRequest, parse_deepspeed, parse_fsdp


def problems(training: dict[str, object]) -> tuple[list[str], list[str]]:
    data = {"model": {"name_or_path": "m"}, "training": training}
    try:
        loaded = load_recipe_dict(data)
    except RecipeError as err:
        return err.problems, []
    return [], loaded.warnings


def fsdp_of(**training: object) -> FsdpRequest | None:
    errors: list[str] = []
    request = parse_fsdp(TrainingConfig(**training), errors)  # type: ignore[arg-type]
    assert errors == []
    return request


def test_no_fsdp_by_default() -> None:
    assert fsdp_of() is None
    assert fsdp_of(fsdp=[]) is None


def test_hf_trainer_strings_and_lists_give_the_same_request() -> None:
    from_string = fsdp_of(fsdp="full_shard auto_wrap offload")
    from_list = fsdp_of(fsdp=["full_shard", "auto_wrap", "offload"])
    assert from_string == from_list
    assert from_string == FsdpRequest(
        version=2, sharding="full_shard", offload=True, auto_wrap=True
    )
    assert from_string is not None and from_string.reshard_after_forward


def test_fsdp_config_keys_with_or_without_the_prefix() -> None:
    request = fsdp_of(
        fsdp="shard_grad_op",
        fsdp_config={
            "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
            "state_dict_type": "full_state_dict",
            "activation_checkpointing": "true",
        },
    )
    assert request is not None
    assert request.sharding == "shard_grad_op" and not request.reshard_after_forward
    assert request.auto_wrap and request.layer_classes == ("LlamaDecoderLayer",)
    assert request.state_dict_type == "FULL_STATE_DICT"
    assert request.activation_checkpointing


def test_fsdp_config_from_a_json_file(tmp_path: Path) -> None:
    config = tmp_path / "fsdp.json"
    config.write_text(json.dumps({"version": 1, "backward_prefetch": "backward_pre"}))
    request = fsdp_of(fsdp="hybrid_shard", fsdp_config=str(config))
    assert request is not None and request.version == 1
    assert request.fsdp1_options == {"backward_prefetch": "BACKWARD_PRE"}


def test_reshard_after_forward_picks_the_fsdp2_sharding() -> None:
    request = fsdp_of(fsdp="auto_wrap", fsdp_config={"reshard_after_forward": False})
    assert request is not None and request.sharding == "shard_grad_op"


def test_deprecated_top_level_fields_still_count() -> None:
    request = fsdp_of(fsdp="full_shard", fsdp_min_num_params=1000)
    assert request is not None and request.auto_wrap and request.min_num_params == 1000


@pytest.mark.parametrize(
    ("training", "expected"),
    [
        ({"fsdp": "full_shard autowrap"}, "training.fsdp: unknown option 'autowrap'"),
        ({"fsdp": "full_shard shard_grad_op"}, "training.fsdp: one sharding option at most"),
        ({"fsdp": "hybrid_shard"}, "training.fsdp: 'hybrid_shard' is an FSDP1 strategy"),
        ({"fsdp_config": {"version": 2}}, "training.fsdp_config is set but training.fsdp is"),
        (
            {"fsdp": "full_shard", "fsdp_config": {"min_num_param": 5}},
            "training.fsdp_config.min_num_param: unknown key",
        ),
        (
            {"fsdp": "full_shard", "fsdp_config": {"limit_all_gathers": True}},
            "training.fsdp_config.limit_all_gathers: an FSDP1 setting",
        ),
        (
            {"fsdp": "full_shard", "fsdp_config": {"state_dict_type": "LOCAL"}},
            "training.fsdp_config.state_dict_type: got 'LOCAL'",
        ),
        ({"fsdp": "full_shard", "fsdp_config": {"xla": True}}, "PyTorch/XLA FSDP is not"),
        (
            {
                "fsdp": "full_shard",
                "fsdp_config": {"activation_checkpointing": True},
                "gradient_checkpointing": True,
            },
            "are both on; keep one",
        ),
        (
            {"fsdp": "full_shard", "deepspeed": {"zero_optimization": {"stage": 2}}},
            "training.fsdp and training.deepspeed are both set",
        ),
        (
            {"fsdp": "full_shard", "save_on_each_node": True},
            "training.save_on_each_node is not supported with FSDP/DeepSpeed",
        ),
    ],
)
def test_fsdp_mistakes_are_errors_when_the_recipe_loads(
    training: dict[str, object], expected: str
) -> None:
    errors, _ = problems(training)
    assert any(expected in e for e in errors), errors


def test_a_typo_gets_a_suggestion() -> None:
    errors, _ = problems({"fsdp": "full_shard", "fsdp_config": {"transformer_layer_cls": "X"}})
    assert "did you mean 'transformer_layer_cls_to_wrap'?" in errors[0]


def test_deepspeed_file_or_mapping(tmp_path: Path) -> None:
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 3}, "bf16": {"enabled": "auto"}}))
    for value in (str(config), {"zero_optimization": {"stage": 3}}):
        errors: list[str] = []
        request = parse_deepspeed(TrainingConfig(deepspeed=value), errors)
        assert errors == [] and request is not None and request.stage == 3


@pytest.mark.parametrize(
    ("deepspeed", "expected"),
    [
        ("missing.json", "training.deepspeed: 'missing.json' is not a file"),
        ({"zero_optimization": {"stage": 4}}, "zero_optimization.stage is 4"),
        ({"optimizer": {"type": "AdamW"}}, "the 'optimizer' section is not supported"),
        ({"scheduler": {"type": "WarmupLR"}}, "the 'scheduler' section is not supported"),
        (
            {"train_micro_batch_size_per_gpu": 3},
            "train_micro_batch_size_per_gpu is 3 but training.per_device_train_batch_size is 8",
        ),
        ({"gradient_accumulation_steps": 4}, "gradient_accumulation_steps is 4 but"),
        ({"bf16": {"enabled": True}}, "bf16.enabled is True but training.bf16 is False"),
        (
            {"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": False}},
            "stage3_gather_16bit_weights_on_model_save false",
        ),
    ],
)
def test_deepspeed_mistakes_are_errors(deepspeed: object, expected: str) -> None:
    errors, _ = problems({"deepspeed": deepspeed})
    assert any(expected in e for e in errors), errors


def test_deepspeed_file_that_is_not_json(tmp_path: Path) -> None:
    config = tmp_path / "ds.json"
    config.write_text("{stage: 2")
    errors, _ = problems({"deepspeed": str(config)})
    assert errors and "is not valid JSON" in errors[0]


def test_auto_values_and_agreeing_values_pass() -> None:
    errors, warnings = problems(
        {
            "deepspeed": {
                "zero_optimization": {"stage": 2},
                "train_micro_batch_size_per_gpu": "auto",
                "gradient_accumulation_steps": 1,
                "gradient_clipping": 1.0,
                "fp16": {"enabled": "auto"},
            }
        }
    )
    assert errors == [] and warnings == []


def test_ddp_settings_under_fsdp_warn_that_they_do_nothing() -> None:
    errors, warnings = problems({"fsdp": "full_shard", "ddp_find_unused_parameters": True})
    assert errors == []
    assert warnings == [
        "training.ddp_find_unused_parameters is set but FSDP/DeepSpeed run instead of DDP, so "
        "it has no effect"
    ]


def test_ddp_fields_are_honoured_quietly() -> None:
    assert problems(
        {
            "ddp_backend": "gloo",
            "ddp_timeout": 60,
            "ddp_find_unused_parameters": True,
            "ddp_bucket_cap_mb": 50,
            "ddp_broadcast_buffers": False,
            "average_tokens_across_devices": False,
        }
    ) == ([], [])
