"""The distributed layer's pure parts: recipe fields → accelerate's plugins and kwargs, what
the launcher asked for, the start-up line and its warnings, the rank-error report, the data
position on another number of processes, and the step-wide NLL weighting."""

from __future__ import annotations

import pytest

from cpo_cli.engine.data_position import resume_position
from cpo_cli.engine.distributed import (
    LauncherRequest,
    RecipeRequest,
    RunShape,
    check_launcher_conflicts,
    cpu_half_precision_support,
    cpu_precision_warning,
    deepspeed_config,
    fsdp_plugin,
    kwargs_handlers,
    launch_warnings,
    read_launcher,
    recipe_request,
)
from cpo_cli.engine.objective import StepTotals
from cpo_cli.engine.ranks import Failure, ProcessFailures, _spans, on_every_process
from cpo_cli.errors import CheckpointError, DataError, RecipeError
from cpo_cli.recipe import TrainingConfig

# --------------------------------------------------------------------------- recipe → accelerate


def test_fsdp2_plugin_from_hf_trainer_fields() -> None:
    training = TrainingConfig(
        fsdp="shard_grad_op auto_wrap",
        fsdp_config={"transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]},
    )
    request = recipe_request(training)
    assert request.fsdp is not None
    plugin = fsdp_plugin(request.fsdp)
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is False
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    assert str(plugin.state_dict_type).endswith("SHARDED_STATE_DICT")


def test_fsdp1_plugin_keeps_its_sharding_strategy() -> None:
    request = recipe_request(
        TrainingConfig(fsdp="hybrid_shard offload", fsdp_config={"version": 1})
    )
    assert request.fsdp is not None
    plugin = fsdp_plugin(request.fsdp)
    assert plugin.fsdp_version == 1
    assert str(plugin.sharding_strategy).endswith("HYBRID_SHARD")
    assert plugin.cpu_offload.offload_params is True


def test_deepspeed_config_takes_cpo_owned_values_from_the_recipe() -> None:
    training = TrainingConfig(
        per_device_train_batch_size=3,
        gradient_accumulation_steps=4,
        max_grad_norm=0.5,
        bf16=True,
        deepspeed={"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto"},
    )
    request = recipe_request(training)
    assert request.deepspeed is not None
    config = deepspeed_config(request.deepspeed, training)
    assert config["train_micro_batch_size_per_gpu"] == 3
    assert config["gradient_accumulation_steps"] == 4
    assert config["gradient_clipping"] == 0.5
    assert config["bf16"] == {"enabled": True}
    assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert config["zero_allow_untested_optimizer"] is True  # cpo's optimizer, as HF Trainer
    assert "auto" not in str(config)
    assert request.deepspeed.config["train_micro_batch_size_per_gpu"] == "auto"  # not mutated


def test_process_group_and_ddp_kwargs() -> None:
    from datetime import timedelta

    handlers = kwargs_handlers(
        TrainingConfig(
            ddp_backend="gloo",
            ddp_timeout=120,
            ddp_find_unused_parameters=True,
            ddp_bucket_cap_mb=50,
        )
    )
    group, ddp = handlers
    # accelerate passes on what differs from its defaults
    assert group.to_kwargs() == {"backend": "gloo", "timeout": timedelta(seconds=120)}
    assert ddp.to_kwargs() == {"find_unused_parameters": True, "bucket_cap_mb": 50}
    (only_group,) = kwargs_handlers(TrainingConfig())
    assert only_group.to_kwargs() == {"timeout": timedelta(seconds=1800)}  # ddp_timeout's default


# --------------------------------------------------------------------------- the launcher


def test_torchrun_world_size_is_the_request() -> None:
    asked = read_launcher({"WORLD_SIZE": "4", "RANK": "0"}, parent_argv=[])
    assert (asked.processes, asked.processes_source) == (4, "WORLD_SIZE")


def test_srun_tasks_without_a_distributed_launcher() -> None:
    asked = read_launcher({"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "3"}, parent_argv=[])
    assert asked.processes == 8 and "srun" in asked.processes_source


def test_accelerate_one_process_launcher_command_line() -> None:
    """`accelerate launch --num_processes 2` on a CPU box runs this process alone; its command
    line is read with accelerate's own parser."""
    argv = [
        "/venv/bin/python",
        "/venv/bin/accelerate",
        "launch",
        "--cpu",
        "--num_processes",
        "2",
        "--use_fsdp",
        "-m",
        "cpo_cli",
        "train",
        "r.yaml",
    ]
    asked = read_launcher({"ACCELERATE_USE_CPU": "True", "MASTER_PORT": "29500"}, argv)
    assert asked.processes == 2 and asked.fsdp
    assert asked.processes_source.startswith("accelerate launch (--cpu --num_processes 2")


def test_accelerate_config_file_is_read(tmp_path: object) -> None:
    from pathlib import Path

    config = Path(str(tmp_path)) / "ds.yaml"
    config.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\nnum_processes: 4\n"
        "mixed_precision: bf16\ndeepspeed_config:\n  zero_stage: 2\n"
    )
    argv = ["python", "-m", "accelerate.commands.launch", "--config_file", str(config), "x.py"]
    asked = read_launcher({"ACCELERATE_USE_CPU": "False"}, argv)
    assert asked.processes == 4 and asked.deepspeed and not asked.fsdp
    assert asked.mixed_precision == "bf16"


def test_master_port_alone_means_more_than_one_was_asked() -> None:
    asked = read_launcher({"ACCELERATE_USE_CPU": "True", "MASTER_PORT": "29500"}, [])
    assert asked.processes == 2


def test_a_plain_run_asks_for_nothing() -> None:
    assert read_launcher({}, []) == LauncherRequest()


def test_fsdp_in_both_recipe_and_launcher_is_an_error() -> None:
    recipe = recipe_request(TrainingConfig(fsdp="full_shard"))
    launcher = LauncherRequest(fsdp=True, launcher_source="accelerate launch (--use_fsdp)")
    with pytest.raises(RecipeError) as caught:
        check_launcher_conflicts(recipe, launcher)
    assert caught.value.problems == [
        "training.fsdp asks for FSDP, and accelerate launch (--use_fsdp) also asks for FSDP; "
        "configure it in one place: remove training.fsdp or launch without the FSDP config"
    ]
    deepspeed = LauncherRequest(deepspeed=True, launcher_source="the launcher")
    with pytest.raises(RecipeError) as caught:
        check_launcher_conflicts(recipe, deepspeed)
    assert "the launcher instead asks for DeepSpeed" in caught.value.problems[0]
    check_launcher_conflicts(RecipeRequest(None, None), launcher)  # launcher alone: fine


# --------------------------------------------------------------------------- what runs


def shape(**changes: object) -> RunShape:
    values: dict[str, object] = {
        "processes": 2,
        "machines": 1,
        "mode": "DDP (gloo)",
        "sharded_parameters": False,
        "mixed_precision": "no",
        "per_device_batch": 4,
        "accumulation": 2,
    }
    values.update(changes)
    return RunShape(**values)  # type: ignore[arg-type]


def test_start_up_line() -> None:
    assert shape().line() == (
        "run: 2 processes on 1 machine | DDP (gloo) | mixed precision: no | batch: 4 "
        "pairs/device x 2 accumulation x 2 processes = 16 pairs per optimizer step"
    )
    single = shape(processes=1, mode="single process (cpu)", accumulation=1).line()
    assert single.endswith("batch: 4 pairs/device x 1 accumulation = 4 pairs per optimizer step")


def test_warns_when_fewer_processes_started_than_asked() -> None:
    asked = LauncherRequest(processes=2, processes_source="accelerate launch (--num_processes 2)")
    (warning,) = launch_warnings(
        shape(processes=1, mode="single process (cpu)"), asked, RecipeRequest(None, None)
    )
    assert warning.startswith(
        "accelerate launch (--num_processes 2) asked for 2 processes but 1 started"
    )
    assert "torchrun --nproc_per_node 2 -m cpo_cli train" in warning


def test_warns_when_fsdp_fell_back_to_ddp() -> None:
    recipe = recipe_request(TrainingConfig(fsdp="full_shard"))
    (warning,) = launch_warnings(shape(), LauncherRequest(), recipe)
    assert warning.startswith("FSDP was asked for (by training.fsdp) but this run is DDP (gloo)")
    assert launch_warnings(shape(mode="FSDP2 (full shard)"), LauncherRequest(), recipe) == []


def test_warns_when_the_launcher_precision_is_not_used() -> None:
    (warning,) = launch_warnings(
        shape(), LauncherRequest(mixed_precision="bf16"), RecipeRequest(None, None)
    )
    assert "training.bf16: true" in warning


def test_warns_of_half_precision_on_a_cpu_without_it() -> None:
    warning = cpu_precision_warning("bf16", {"bf16": False, "fp16": False})
    assert warning is not None
    assert "training.bf16: false" in warning
    assert cpu_precision_warning("bf16", {"bf16": True, "fp16": False}) is None
    assert cpu_precision_warning("fp16", {"bf16": False, "fp16": None}) is None  # unknown
    assert cpu_precision_warning("no", {"bf16": False, "fp16": False}) is None
    assert set(cpu_half_precision_support()) == {"bf16", "fp16"}


# --------------------------------------------------------------------------- errors of every rank


def test_failures_are_grouped_and_prefixed() -> None:
    failures = [
        Failure(1, "node-b", ("data.train: file not found", "hint: check the path"), 1),
        Failure(3, "node-b", ("data.train: file not found", "hint: check the path"), 1),
        Failure(2, "node-c", ("RuntimeError: boom",), 1, user_error=False),
    ]
    err = ProcessFailures(failures)
    assert err.scope == "job" and err.exit_code == 1
    assert err.lines() == [
        "[ranks 1, 3 on node-b] data.train: file not found",
        "hint: check the path",
        "[rank 2 on node-c] internal error: RuntimeError: boom (its traceback is printed above)",
    ]


def test_spans() -> None:
    assert _spans([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"


def test_one_process_raises_its_own_error() -> None:
    class Single:
        num_processes = 1

    with pytest.raises(DataError), on_every_process(Single()):
        raise DataError("data.train: missing")
    with on_every_process(Single()):
        pass


# --------------------------------------------------------------------------- data position


def test_same_shape_resumes_where_it_stopped() -> None:
    kept = resume_position(
        batches_done=6,
        saved_processes=2,
        saved_batch=4,
        saved_batches_per_epoch=10,
        processes=2,
        batch=4,
        batches_per_epoch=10,
    )
    assert kept.batches_done_in_epoch == 6 and kept.change == ""


def test_fewer_processes_continue_at_the_same_row() -> None:
    """2 processes x 4 pairs, 6 micro-batches each: 48 rows done; 1 process x 4 → 12."""
    moved = resume_position(
        batches_done=6,
        saved_processes=2,
        saved_batch=4,
        saved_batches_per_epoch=10,
        processes=1,
        batch=4,
        batches_per_epoch=20,
    )
    assert moved.batches_done_in_epoch == 12
    assert "resuming with 1 process x 4 pairs" in moved.change and "48 pairs" in moved.change


def test_a_position_no_batch_ends_at_is_refused() -> None:
    with pytest.raises(CheckpointError) as caught:
        resume_position(
            batches_done=3,
            saved_processes=2,
            saved_batch=2,
            saved_batches_per_epoch=10,
            processes=4,
            batch=2,
            batches_per_epoch=5,
        )
    assert "12 pairs into its epoch" in caught.value.message
    assert caught.value.hint is not None and "e.g. 1, 2, 4" in caught.value.hint


def test_an_epoch_end_maps_to_the_new_epoch_end() -> None:
    moved = resume_position(
        batches_done=10,
        saved_processes=2,
        saved_batch=4,
        saved_batches_per_epoch=10,
        processes=3,
        batch=4,
        batches_per_epoch=7,
    )
    assert moved.batches_done_in_epoch == 7


def test_deepspeed_state_cannot_change_process_count() -> None:
    with pytest.raises(CheckpointError, match="DeepSpeed state is split per process"):
        resume_position(
            batches_done=2,
            saved_processes=2,
            saved_batch=4,
            saved_batches_per_epoch=10,
            processes=1,
            batch=8,
            batches_per_epoch=10,
            sharded_state="DeepSpeed",
        )


def test_token_budget_batches_resume_only_at_the_same_shape() -> None:
    """With `max_tokens_per_batch` a micro-batch holds any number of pairs: the row arithmetic
    does not hold, so another shape is refused; the same shape continues as saved."""
    shape = {"saved_processes": 2, "saved_batch": 4, "saved_batches_per_epoch": 9}
    with pytest.raises(CheckpointError, match="max_tokens_per_batch"):
        resume_position(
            batches_done=2, processes=1, batch=8, batches_per_epoch=18, token_budget=True, **shape
        )
    same = resume_position(
        batches_done=2, processes=2, batch=4, batches_per_epoch=9, token_budget=True, **shape
    )
    assert same.batches_done_in_epoch == 2 and not same.change


def test_old_checkpoints_without_a_shape_resume_as_before() -> None:
    kept = resume_position(
        batches_done=3,
        saved_processes=None,
        saved_batch=None,
        saved_batches_per_epoch=None,
        processes=4,
        batch=2,
        batches_per_epoch=9,
    )
    assert kept.batches_done_in_epoch == 3


# --------------------------------------------------------------------------- the NLL term


def test_step_wide_token_weighting_by_hand() -> None:
    """Two processes, two micro-batches each; chosen-token counts 3, 5 | 2, 10 and summed NLLs
    6, 5 | 4, 12. The step's token mean is (6+5+4+12)/(3+5+2+10) = 27/20. Each micro-batch
    divides by the denominator; the loop then averages over 2 micro-batches and 2 processes."""
    nll_sums, tokens = [6.0, 5.0, 4.0, 12.0], [3, 5, 2, 10]
    totals = StepTotals(pairs=8.0, chosen_tokens=float(sum(tokens)), accumulation=2, processes=2)
    denominator = totals.nll_denominator(2)  # 2 pairs in each micro-batch
    assert denominator == 5.0
    assert totals.weight(2) == 1.0
    step_value = sum(totals.weight(2) * s / denominator for s in nll_sums) / (2 * 2)
    assert step_value == pytest.approx(27 / 20)
    per_micro_batch_mean = sum(s / t for s, t in zip(nll_sums, tokens, strict=True)) / 4
    assert per_micro_batch_mean != pytest.approx(27 / 20)  # TRL's mean differs here


# --------------------------------------------------------------------------- cpo train --launch


def test_launch_hands_off_to_torchrun_with_the_same_arguments() -> None:
    import sys
    from pathlib import Path

    from cpo_cli.commands.train import torchrun_command

    command = torchrun_command(2, Path("r.yaml"), ["training.beta=0.2"], quiet=True)
    assert command == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "cpo_cli", "train", "r.yaml", "training.beta=0.2", "--quiet",
    ]  # fmt: skip


def test_launch_inside_a_launched_process_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    from pathlib import Path

    from cpo_cli.commands.train import hand_off_to_torchrun
    from cpo_cli.errors import UsageError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="drop --launch"):
        hand_off_to_torchrun(2, Path(str(tmp_path)) / "r.yaml", [], quiet=False)
