"""What the cpo engine does with each `training` field: honoured, or not applicable with a reason.
A not-applicable field set to a value other than its default is never ignored silently: it is a
warning, or an error where ignoring it would change the run in a way the user did not ask for
(deprecated aliases, distributed back-ends configured elsewhere, a different loss)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cpo_cli.recipe.messages import show_value
from cpo_cli.recipe.schema import Recipe
from cpo_cli.recipe.training import TrainingConfig


@dataclass(frozen=True)
class FieldStatus:
    honoured: bool
    #: why the field does not apply (empty when honoured)
    reason: str = ""
    #: what a non-default value of a not-applicable field is: a warning or an error
    severity: Literal["warning", "error"] = "warning"

    @property
    def label(self) -> str:
        if self.honoured:
            return "honoured"
        return "not applicable (error if set)" if self.severity == "error" else "not applicable"


HONOURED: tuple[str, ...] = (
    # run, schedule, optimisation
    "output_dir", "overwrite_output_dir", "run_name", "num_train_epochs", "max_steps",
    "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
    "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
    "optim", "optim_args", "adafactor", "lr_scheduler_type", "lr_scheduler_kwargs",
    "warmup_ratio", "warmup_steps",
    "seed", "data_seed", "full_determinism",
    # devices, precision, memory, speed
    "bf16", "fp16", "use_cpu", "gradient_checkpointing", "gradient_checkpointing_kwargs",
    "torch_compile", "torch_compile_backend", "torch_compile_mode", "neftune_noise_alpha",
    # data loading
    "dataloader_drop_last", "dataloader_num_workers", "dataloader_prefetch_factor",
    "dataloader_pin_memory", "dataloader_persistent_workers", "group_by_length",
    "auto_find_batch_size", "use_liger_kernel", "liger_kernel_config",
    # logging, evaluation, checkpoints
    "logging_dir", "logging_strategy", "logging_first_step", "logging_steps",
    "logging_nan_inf_filter", "report_to", "disable_tqdm",
    "eval_strategy", "eval_steps", "eval_delay", "eval_on_start",
    "save_strategy", "save_steps", "save_total_limit", "save_on_each_node",
    "save_only_model", "load_best_model_at_end", "metric_for_best_model", "greater_is_better",
    "resume_from_checkpoint",
    # several processes and machines (mapped onto accelerate, see cpo_cli.engine.distributed)
    "fsdp", "fsdp_config", "fsdp_min_num_params", "fsdp_transformer_layer_cls_to_wrap",
    "deepspeed", "ddp_backend", "ddp_timeout", "ddp_find_unused_parameters",
    "ddp_bucket_cap_mb", "ddp_broadcast_buffers", "average_tokens_across_devices",
    # Hub
    "push_to_hub", "hub_model_id", "hub_strategy", "hub_token", "hub_private_repo",
    "hub_revision",
    # CPO
    "max_length", "max_prompt_length", "max_completion_length", "beta", "label_smoothing",
    "loss_type", "disable_dropout", "cpo_alpha", "simpo_gamma",
    "padding_value", "truncation_mode", "generate_during_eval", "is_encoder_decoder",
    "model_init_kwargs", "dataset_num_proc",
    # beyond CPOConfig
    "alpha", "prefix_sharing", "logprob_chunk_size", "enable_jit_checkpoint",
    "max_nonfinite_steps", "mlp_activation_saving", "max_tokens_per_batch",
)  # fmt: skip

_HF_ONLY = "an HF Trainer internal; cpo has its own loop"


def _na(reason: str) -> FieldStatus:
    return FieldStatus(False, reason, "warning")


def _refuse(reason: str) -> FieldStatus:
    return FieldStatus(False, reason, "error")


NOT_APPLICABLE: dict[str, FieldStatus] = {
    "save_safetensors": _refuse(
        "transformers 5 always writes safetensors; pickle checkpoints cannot be asked for"
    ),
    "hub_always_push": _na(
        "checkpoint pushes are synchronous, so every checkpoint is pushed already"
    ),
    # legacy script flags and HF Trainer internals
    "do_train": _na("legacy script flag; the command (`cpo train`, `cpo eval`) decides"),
    "do_eval": _na("legacy script flag; `eval_strategy` and `cpo eval` decide"),
    "do_predict": _na("legacy script flag; cpo has no predict step"),
    "prediction_loss_only": _na("evaluation always reports the loss and the preference metrics"),
    "eval_accumulation_steps": _na("evaluation keeps only scalar metrics; nothing accumulates"),
    "eval_do_concat_batches": _na("evaluation keeps only scalar metrics; nothing is concatenated"),
    "eval_use_gather_object": _na("only scalar metrics are gathered across processes"),
    "torch_empty_cache_steps": _na(
        "not implemented by the cpo engine (chunked log-probs keep peak memory low instead)"
    ),
    "past_index": _na("Transformer-XL style memories are not used"),
    "remove_unused_columns": _na("prepared data holds only the columns the engine uses"),
    "label_names": _na("labels are built from the chosen and rejected answers"),
    "label_pad_token_id": _na(
        "the engine selects answer tokens by position; no label padding value is used"
    ),
    "ignore_data_skip": _na("not implemented: resuming always continues with the next batch"),
    "length_column_name": _na("`group_by_length` measures the tokenised pairs itself"),
    "skip_memory_metrics": _na("the HF Trainer memory profiler is not part of cpo"),
    "use_legacy_prediction_loop": _na(_HF_ONLY),
    "restore_callback_states_from_checkpoint": _na("cpo has no callbacks"),
    "include_inputs_for_metrics": _na("cpo has no compute_metrics hook"),
    "include_for_metrics": _na("cpo has no compute_metrics hook"),
    "batch_eval_metrics": _na("cpo has no compute_metrics hook"),
    "include_tokens_per_second": _na("not implemented as a Trainer speed metric in cpo"),
    "include_num_input_tokens_seen": _na("not implemented as a Trainer metric in cpo"),
    "ray_scope": _na("hyperparameter search is not part of cpo"),
    "mp_parameters": _na("SageMaker model parallelism is not supported"),
    "optim_target_modules": _na("GaLore/APOLLO optimizers are not supported"),
    # logging verbosity
    "log_level": _na("cpo prints its own lines; use --quiet for less output"),
    "log_level_replica": _na("only the main process prints"),
    "log_on_each_node": _na("only the main process prints"),
    # hardware back-ends the engine does not use
    "use_mps_device": _na("deprecated; Apple MPS is used automatically when available"),
    "jit_mode_eval": _na("TorchScript inference is not used"),
    "use_ipex": _na("Intel extension for PyTorch is not supported"),
    "fp16_opt_level": _na("Apex AMP is not used; mixed precision is torch autocast"),
    "half_precision_backend": _na("mixed precision is always torch autocast via accelerate"),
    "fp16_backend": _na("deprecated; mixed precision is always torch autocast via accelerate"),
    "bf16_full_eval": _na("evaluation runs under the same precision as training"),
    "fp16_full_eval": _na("evaluation runs under the same precision as training"),
    "tf32": _na("TF32 is a GPU matmul mode left at torch's default"),
    "tpu_num_cores": _na("TPUs are not supported"),
    "tpu_metrics_debug": _na("TPUs are not supported"),
    "debug": _na("HF Trainer debug options are not supported"),
    "local_rank": _na("set by the launcher, not by the recipe"),
    # ignoring these would silently run something else than asked
    "accelerator_config": _refuse(
        "cpo sets accelerate's options itself (FSDP and DeepSpeed from training.fsdp / "
        "training.deepspeed or the launcher's `accelerate config`)"
    ),
    "label_smoothing_factor": _refuse(
        "the HF Trainer's LM label smoothing; CPO's own is `training.label_smoothing`"
    ),
    "per_gpu_train_batch_size": _refuse("deprecated; use `per_device_train_batch_size`"),
    "per_gpu_eval_batch_size": _refuse("deprecated; use `per_device_eval_batch_size`"),
    "no_cuda": _refuse("deprecated; use `use_cpu: true`"),
    "torchdynamo": _refuse("deprecated; use `torch_compile_backend`"),
    "push_to_hub_model_id": _refuse("deprecated; use `hub_model_id`"),
    "push_to_hub_organization": _refuse("deprecated; use `hub_model_id: org/name`"),
    "push_to_hub_token": _refuse("deprecated; use `hub_token` (e.g. `${oc.env:HF_TOKEN}`)"),
}


def field_status(name: str) -> FieldStatus:
    """The status of one `training` field (KeyError for a name that is not a field)."""
    if name in NOT_APPLICABLE:
        return NOT_APPLICABLE[name]
    if name in HONOURED:
        return FieldStatus(True)
    raise KeyError(name)


#: values that all mean "not set" (e.g. `fsdp: null` where the default is `""`)
_UNSET: tuple[object, ...] = (None, "", [], {})


def _default(name: str) -> object:
    info = TrainingConfig.model_fields[name]
    return info.get_default(call_default_factory=True)


def check_field_status(recipe: Recipe) -> tuple[list[str], list[str]]:
    """(errors, warnings) for not-applicable fields set to a value other than their default."""
    errors: list[str] = []
    warnings: list[str] = []
    training = recipe.training
    for name, status in NOT_APPLICABLE.items():
        value, default = getattr(training, name), _default(name)
        if value == default or (value in _UNSET and default in _UNSET):
            continue
        line = f"training.{name}: not applicable in cpo ({status.reason})"
        if status.severity == "error":
            errors.append(f"{line}; remove it from the recipe")
        else:
            warnings.append(f"{line}; the value {show_value(value)} is ignored")
    return errors, warnings
