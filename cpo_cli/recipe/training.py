"""`training:` — every field of the seed's CPOConfig (same names, same defaults), plus `alpha`
(AlphaPO) and the cpo engine switches. Descriptions are written once here: they feed the JSON
schema and docs/recipe-reference.md. Whether the engine honours a field lives in `status.py`."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cpo_cli.recipe.choices import (
    DdpBackend,
    DebugOption,
    FsdpOption,
    HalfPrecisionBackend,
    HubStrategy,
    IncludeForMetrics,
    IntervalStrategy,
    LogLevel,
    LossType,
    OptimizerName,
    RayScope,
    ReportTarget,
    SaveStrategy,
    SchedulerType,
    TorchCompileMode,
    TruncationMode,
)
from cpo_cli.recipe.optim_args import parse_optim_args

#: fields added beyond CPOConfig (documented as such)
CPO_EXTENSIONS: tuple[str, ...] = (
    "alpha",
    "prefix_sharing",
    "logprob_chunk_size",
    "enable_jit_checkpoint",
    "max_nonfinite_steps",
    "mlp_activation_saving",
    "max_tokens_per_batch",
)

# Fields TRL typed `dict | str`: a string there is a JSON object (as on TRL's command line).
_JSON_DICT_FIELDS = ("lr_scheduler_kwargs", "gradient_checkpointing_kwargs", "model_init_kwargs")


class TrainingConfig(BaseModel):
    """The CPOConfig mirror. Unknown keys are refused; every default is the seed's."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, validate_assignment=True)

    # --- run and output -------------------------------------------------------------------
    output_dir: str | None = Field(
        default=None,
        description="Folder for checkpoints, metrics and the final model. None: "
        "`trainer_output` in the working directory.",
    )
    overwrite_output_dir: bool = Field(
        default=False,
        description="Allow an `output_dir` that holds files cpo did not write; they are left "
        "alone (cpo only ever replaces or deletes its own files, and refuses a folder with a "
        "foreign file it would replace).",
    )
    do_train: bool = Field(
        default=False, description="Legacy script flag; the command chosen decides."
    )
    do_eval: bool = Field(
        default=False, description="Legacy script flag; the command chosen decides."
    )
    do_predict: bool = Field(
        default=False, description="Legacy script flag; the command chosen decides."
    )

    # --- evaluation -------------------------------------------------------------------------
    eval_strategy: IntervalStrategy = Field(
        default="no",
        description="When to evaluate during training: `no`, every `eval_steps` (`steps`) or "
        "at each epoch end (`epoch`). Needs `data.eval`.",
    )
    prediction_loss_only: bool = Field(
        default=False,
        description="Return only the loss from prediction steps (HF Trainer internals).",
    )
    per_device_train_batch_size: int = Field(
        default=8, ge=1, description="Preference pairs per device per micro-batch in training."
    )
    per_device_eval_batch_size: int = Field(
        default=8, ge=1, description="Preference pairs per device per batch in evaluation."
    )
    per_gpu_train_batch_size: int | None = Field(
        default=None, ge=1, description="Deprecated alias of `per_device_train_batch_size`."
    )
    per_gpu_eval_batch_size: int | None = Field(
        default=None, ge=1, description="Deprecated alias of `per_device_eval_batch_size`."
    )
    gradient_accumulation_steps: int = Field(
        default=1,
        ge=1,
        description="Micro-batches accumulated per optimizer step (the effective batch is "
        "this x per-device batch x processes).",
    )
    eval_accumulation_steps: int | None = Field(
        default=None,
        ge=1,
        description="Prediction steps to accumulate before moving outputs to CPU.",
    )
    eval_delay: float | None = Field(
        default=0,
        ge=0,
        description="Epochs or steps (per `eval_strategy`) to wait before the first evaluation.",
    )
    torch_empty_cache_steps: int | None = Field(
        default=None, ge=1, description="Call `torch.<device>.empty_cache()` every this many steps."
    )

    # --- optimisation -----------------------------------------------------------------------
    learning_rate: float = Field(default=1e-06, ge=0, description="Peak learning rate.")
    weight_decay: float = Field(
        default=0.0,
        ge=0,
        description="Decoupled weight decay (not applied to biases and norm weights).",
    )
    adam_beta1: float = Field(default=0.9, ge=0, lt=1, description="beta1 of Adam-type optimizers.")
    adam_beta2: float = Field(
        default=0.999, ge=0, lt=1, description="beta2 of Adam-type optimizers."
    )
    adam_epsilon: float = Field(default=1e-08, gt=0, description="epsilon of Adam-type optimizers.")
    max_grad_norm: float = Field(
        default=1.0, ge=0, description="Clip the gradient norm to this value (0: no clipping)."
    )
    num_train_epochs: float = Field(
        default=3.0,
        ge=0,
        description="Epochs to train (may be fractional); `max_steps` > 0 overrides.",
    )
    max_steps: int = Field(
        default=-1, ge=-1, description="Optimizer steps to train; -1: use `num_train_epochs`."
    )
    lr_scheduler_type: SchedulerType = Field(
        default="linear",
        description="Learning-rate schedule after warmup, by its transformers name.",
    )
    lr_scheduler_kwargs: dict[str, Any] | None = Field(
        default_factory=dict,
        description="Extra arguments of the schedule (e.g. `min_lr` for `cosine_with_min_lr`); "
        "a JSON object string is accepted.",
    )
    warmup_ratio: float = Field(
        default=0.0, ge=0, le=1, description="Share of the total steps spent in linear warmup."
    )
    warmup_steps: int = Field(
        default=0, ge=0, description="Linear warmup steps; overrides `warmup_ratio` when > 0."
    )

    # --- logging ----------------------------------------------------------------------------
    log_level: LogLevel = Field(
        default="passive", description="transformers' logger level on the main process."
    )
    log_level_replica: LogLevel = Field(
        default="warning", description="transformers' logger level on the other processes."
    )
    log_on_each_node: bool = Field(
        default=True, description="Log on the main process of each node, not only of node 0."
    )
    logging_dir: str | None = Field(
        default=None,
        description="Folder for tracker logs (tensorboard); None: `<output_dir>/runs/...`.",
    )
    logging_strategy: IntervalStrategy = Field(
        default="steps",
        description="When to log metrics: `no`, every `logging_steps`, or each epoch.",
    )
    logging_first_step: bool = Field(default=False, description="Also log after the first step.")
    logging_steps: float = Field(
        default=10,
        gt=0,
        description="Steps between logs; a value below 1 is a share of the total steps.",
    )
    logging_nan_inf_filter: bool = Field(
        default=True,
        description="Leave NaN/inf losses out of the logged mean loss (only the loss: the other "
        "metrics, the final summary and the NaN guard see every value; see "
        "`max_nonfinite_steps`).",
    )

    # --- checkpoints ------------------------------------------------------------------------
    save_strategy: SaveStrategy = Field(
        default="steps",
        description="When to save a checkpoint: `no`, every `save_steps`, each epoch, or when "
        "`metric_for_best_model` improves (`best`).",
    )
    save_steps: float = Field(
        default=500,
        gt=0,
        description="Steps between checkpoints; below 1: a share of the total steps.",
    )
    save_total_limit: int | None = Field(
        default=None, ge=1, description="Keep at most this many checkpoints (oldest deleted first)."
    )
    save_safetensors: bool | None = Field(
        default=True, description="Save weights as safetensors rather than pickled torch files."
    )
    save_on_each_node: bool = Field(
        default=False, description="Multi-node: save on every node, not only on the main one."
    )
    save_only_model: bool = Field(
        default=False,
        description="Save only the weights in checkpoints (no optimizer/scheduler/RNG state): "
        "smaller, but cannot be resumed from.",
    )
    restore_callback_states_from_checkpoint: bool = Field(
        default=False, description="Restore HF Trainer callback states when resuming."
    )

    # --- devices and precision --------------------------------------------------------------
    no_cuda: bool = Field(default=False, description="Deprecated alias of `use_cpu`.")
    use_cpu: bool = Field(
        default=False, description="Train on the CPU even when an accelerator exists."
    )
    use_mps_device: bool = Field(
        default=False, description="Deprecated: Apple MPS is used automatically when available."
    )
    seed: int = Field(default=42, description="Random seed set at the start of training.")
    data_seed: int | None = Field(
        default=None, description="Seed of the data order (shuffling); None: `seed`."
    )
    jit_mode_eval: bool = Field(default=False, description="Use PyTorch JIT trace for inference.")
    use_ipex: bool = Field(default=False, description="Use Intel extension for PyTorch.")
    bf16: bool | None = Field(
        default=None, description="bfloat16 mixed precision (autocast); None: off."
    )
    fp16: bool = Field(default=False, description="float16 mixed precision with loss scaling.")
    fp16_opt_level: Literal["O0", "O1", "O2", "O3"] = Field(
        default="O1", description="Apex AMP optimisation level."
    )
    half_precision_backend: HalfPrecisionBackend = Field(
        default="auto", description="Mixed-precision backend of the HF Trainer."
    )
    bf16_full_eval: bool = Field(
        default=False, description="Evaluate with the whole model cast to bfloat16."
    )
    fp16_full_eval: bool = Field(
        default=False, description="Evaluate with the whole model cast to float16."
    )
    tf32: bool | None = Field(default=None, description="Allow TF32 matmuls on Ampere+ GPUs.")
    local_rank: int = Field(
        default=-1, description="Process rank, set by the distributed launcher."
    )
    ddp_backend: DdpBackend | None = Field(
        default=None,
        description="torch.distributed backend of the process group; None: accelerate's choice "
        "(nccl on NVIDIA GPUs, gloo on CPUs).",
    )
    tpu_num_cores: int | None = Field(default=None, description="TPU cores (TPU only).")
    tpu_metrics_debug: bool = Field(default=False, description="Deprecated TPU debug metrics.")
    debug: str | list[DebugOption] = Field(
        default="",
        description="HF Trainer debug options (`underflow_overflow`, `tpu_metrics_debug`).",
    )

    # --- data loading -----------------------------------------------------------------------
    dataloader_drop_last: bool = Field(
        default=False, description="Drop the last incomplete batch of each epoch."
    )
    eval_steps: float | None = Field(
        default=None,
        gt=0,
        description="Steps between evaluations with `eval_strategy: steps`; None: "
        "`logging_steps`. Below 1: a share of the total steps.",
    )
    dataloader_num_workers: int = Field(
        default=0, ge=0, description="Worker processes of the data loader (0: the main process)."
    )
    dataloader_prefetch_factor: int | None = Field(
        default=None, ge=1, description="Batches each worker loads ahead (needs workers > 0)."
    )
    past_index: int = Field(
        default=-1, description="Output index of past states (Transformer-XL style)."
    )
    run_name: str | None = Field(
        default=None, description="Name of the run shown by trackers (wandb, tensorboard...)."
    )
    disable_tqdm: bool | None = Field(
        default=None, description="Hide the progress bar; None: hidden when not on a terminal."
    )
    remove_unused_columns: bool | None = Field(
        default=True, description="Drop dataset columns the model's forward does not take."
    )
    label_names: list[str] | None = Field(
        default=None, description="Input keys that hold labels (HF Trainer)."
    )

    # --- best model -------------------------------------------------------------------------
    load_best_model_at_end: bool | None = Field(
        default=False,
        description="Reload the best checkpoint (by `metric_for_best_model`) at the end; needs "
        "matching save and eval strategies.",
    )
    metric_for_best_model: str | None = Field(
        default=None,
        description="Metric that picks the best checkpoint, e.g. `eval_loss` or "
        "`eval_rewards/accuracies` (the `eval_` prefix may be left out). None with "
        "`load_best_model_at_end`: `loss`.",
    )
    greater_is_better: bool | None = Field(
        default=None,
        description="Whether a larger `metric_for_best_model` is better; None: true unless "
        "the metric ends in `loss`.",
    )
    ignore_data_skip: bool = Field(
        default=False, description="On resume, do not skip the batches the run had already seen."
    )

    # --- distributed ------------------------------------------------------------------------
    fsdp: list[FsdpOption] | str | None = Field(
        default="",
        description="Shard the model with FSDP through accelerate, as HF Trainer reads it: a "
        "sharding option (`full_shard`, `shard_grad_op`; FSDP1 also `no_shard`, "
        "`hybrid_shard`, `hybrid_shard_zero2`) plus `offload` and `auto_wrap`, as a "
        "space-separated string or a list. Needs several processes on accelerator devices; "
        "see docs/distributed.md.",
    )
    fsdp_min_num_params: int = Field(
        default=0,
        ge=0,
        description="Deprecated spelling of `fsdp_config.min_num_params` (still honoured).",
    )
    fsdp_config: dict[str, Any] | str | None = Field(
        default=None,
        description="FSDP settings (mapping or JSON file; keys with or without the `fsdp_` "
        "prefix): `version` (2, the default, or 1), `transformer_layer_cls_to_wrap`, "
        "`min_num_params`, `reshard_after_forward`, `state_dict_type` (SHARDED_STATE_DICT or "
        "FULL_STATE_DICT, for the resumable state), `offload_params`, "
        "`activation_checkpointing`, `cpu_ram_efficient_loading`; FSDP1 also "
        "`backward_prefetch`, `forward_prefetch`, `limit_all_gathers`, `use_orig_params`, "
        "`sync_module_states`.",
    )
    fsdp_transformer_layer_cls_to_wrap: str | None = Field(
        default=None,
        description="Deprecated spelling of `fsdp_config.transformer_layer_cls_to_wrap` (still "
        "honoured).",
    )
    accelerator_config: dict[str, Any] | str | None = Field(
        default=None, description="HF Trainer's accelerate options (mapping or JSON file)."
    )
    deepspeed: dict[str, Any] | str | None = Field(
        default=None,
        description="DeepSpeed (ZeRO) through accelerate: a DeepSpeed JSON config file or the "
        "same as a mapping. Batch size, accumulation, clipping and precision are filled in "
        "from this recipe (leave them `auto`); `optimizer`/`scheduler` sections are refused "
        "(cpo builds them from `optim` and `lr_scheduler_type`).",
    )
    label_smoothing_factor: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="HF Trainer's label smoothing of its LM loss (CPO's is `label_smoothing`).",
    )
    optim: OptimizerName = Field(
        default="adamw_torch",
        description="Optimizer by its transformers name. The engine builds the torch ones "
        "(adamw_torch, adamw_torch_fused, adafactor, sgd, adagrad, rmsprop) and the "
        "bitsandbytes ones (adamw_8bit, paged_adamw_*, lion_*, rmsprop_bnb*) when bitsandbytes "
        "is installed; other names are refused when the recipe loads.",
    )
    optim_args: str | None = Field(
        default=None,
        description="Extra optimizer arguments as `k=v,k=v`, e.g. `momentum=0.9,nesterov=True`.",
    )
    adafactor: bool = Field(
        default=False, description="Deprecated spelling of `optim: adafactor` (still honoured)."
    )
    group_by_length: bool = Field(
        default=False,
        description="Batch pairs of similar length together (less padding, still shuffled).",
    )
    length_column_name: str | None = Field(
        default="length",
        description="Dataset column with precomputed lengths for `group_by_length`.",
    )
    report_to: ReportTarget | list[ReportTarget] | None = Field(
        default=None,
        description="Trackers to send metrics to: the engine writes `tensorboard` and `wandb` "
        "(`all`: those installed); None or `none`: only `metrics.jsonl`. The other HF names "
        "are refused when the recipe loads.",
    )
    ddp_find_unused_parameters: bool | None = Field(
        default=None,
        description="DDP `find_unused_parameters` (None: false, torch's default).",
    )
    ddp_bucket_cap_mb: int | None = Field(
        default=None, ge=1, description="DDP `bucket_cap_mb` (None: torch's default, 25)."
    )
    ddp_broadcast_buffers: bool | None = Field(
        default=None, description="DDP `broadcast_buffers` (None: torch's default, true)."
    )
    dataloader_pin_memory: bool = Field(
        default=True, description="Pin host memory of batches (faster copies to a GPU)."
    )
    dataloader_persistent_workers: bool = Field(
        default=False, description="Keep data-loader workers alive between epochs."
    )
    skip_memory_metrics: bool = Field(
        default=True, description="Skip the HF Trainer's memory profiler metrics."
    )
    use_legacy_prediction_loop: bool = Field(
        default=False, description="Use the HF Trainer's old prediction loop."
    )

    # --- Hub --------------------------------------------------------------------------------
    push_to_hub: bool = Field(
        default=False, description="Upload the model to the Hugging Face Hub (see `hub_strategy`)."
    )
    resume_from_checkpoint: bool | str | None = Field(
        default=None,
        description="Resume from a checkpoint: a `checkpoint-N` folder cpo wrote; `true` or "
        "`last`: the newest good one in `output_dir` (damaged or foreign ones are passed over "
        "with a warning; none is an error); `auto`: the same, or start afresh when there is "
        "none (for requeue scripts). None/false: start afresh.",
    )
    hub_model_id: str | None = Field(
        default=None,
        description="Hub repository to push to (`user/name` or `org/name`; a bare `name` is "
        "the token owner's, for every push of the run); needed with `push_to_hub`.",
    )
    hub_strategy: HubStrategy = Field(
        default="every_save",
        description="What to push and when: `end`, `every_save`, `checkpoint` (also the "
        "latest checkpoint), `all_checkpoints`.",
    )
    hub_token: str | None = Field(
        default=None,
        description="Hub token; prefer `${oc.env:HF_TOKEN}` or the HF_TOKEN environment "
        "variable. Never printed or saved.",
    )
    hub_private_repo: bool | None = Field(
        default=None, description="Create the Hub repository as private; None: the Hub's default."
    )
    hub_always_push: bool = Field(
        default=False, description="Push every time even if the previous push has not finished."
    )
    hub_revision: str | None = Field(default=None, description="Hub branch to push to.")

    # --- memory -----------------------------------------------------------------------------
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in the backward pass to save memory."
    )
    gradient_checkpointing_kwargs: dict[str, Any] | None = Field(
        default=None,
        description="Arguments of `gradient_checkpointing_enable`; a JSON object string is "
        "accepted. None: `{use_reentrant: false}` (works with frozen embeddings and LoRA).",
    )
    include_inputs_for_metrics: bool = Field(
        default=False, description="Deprecated: pass inputs to `compute_metrics`."
    )
    include_for_metrics: list[IncludeForMetrics] = Field(
        default_factory=list, description="Extra data passed to `compute_metrics` (HF Trainer)."
    )
    eval_do_concat_batches: bool = Field(
        default=True, description="Concatenate prediction batches across evaluation steps."
    )
    fp16_backend: HalfPrecisionBackend = Field(
        default="auto", description="Deprecated alias of `half_precision_backend`."
    )
    push_to_hub_model_id: str | None = Field(
        default=None, description="Deprecated: use `hub_model_id`."
    )
    push_to_hub_organization: str | None = Field(
        default=None, description="Deprecated: use `hub_model_id: org/name`."
    )
    push_to_hub_token: str | None = Field(
        default=None, description="Deprecated: use `hub_token`. Never printed or saved."
    )
    mp_parameters: str = Field(default="", description="SageMaker model-parallel parameters.")
    auto_find_batch_size: bool = Field(
        default=False,
        description="On an out-of-memory error, halve `per_device_train_batch_size` (and "
        "`max_tokens_per_batch`), double `gradient_accumulation_steps` (same effective batch) "
        "and start the run again.",
    )
    full_determinism: bool = Field(
        default=False,
        description="Deterministic algorithms everywhere (reproducible, slower).",
    )
    torchdynamo: str | None = Field(
        default=None, description="Deprecated: use `torch_compile_backend`."
    )
    ray_scope: RayScope | None = Field(
        default="last", description="Ray Tune scope for hyperparameter search."
    )
    ddp_timeout: int = Field(
        default=1800,
        ge=1,
        description="Seconds a process waits in a collective operation (process group "
        "timeout) before failing.",
    )
    torch_compile: bool = Field(
        default=False, description="Compile the model with `torch.compile`."
    )
    torch_compile_backend: str | None = Field(
        default=None,
        description="`torch.compile` backend (e.g. `inductor`); setting it compiles. None: "
        "`inductor`.",
    )
    torch_compile_mode: TorchCompileMode | None = Field(
        default=None,
        description="`torch.compile` mode; setting it compiles.",
    )
    include_tokens_per_second: bool | None = Field(
        default=False, description="HF Trainer: add tokens/s to the speed metrics."
    )
    include_num_input_tokens_seen: bool | None = Field(
        default=False, description="HF Trainer: log the number of input tokens seen."
    )
    neftune_noise_alpha: float | None = Field(
        default=None,
        gt=0,
        description="NEFTune: add uniform noise of this scale to input embeddings in training.",
    )
    optim_target_modules: str | list[str] | None = Field(
        default=None, description="Modules optimised by GaLore/APOLLO optimizers."
    )
    batch_eval_metrics: bool = Field(
        default=False, description="Call `compute_metrics` per batch (HF Trainer)."
    )
    eval_on_start: bool = Field(
        default=False, description="Evaluate once before the first training step."
    )
    use_liger_kernel: bool | None = Field(
        default=False,
        description="Apply Liger-Kernel's Triton kernels to the model's layers (RMSNorm, "
        "SwiGLU, RoPE) through `apply_liger_kernel_to_<model_type>`; needs the liger-kernel "
        "package and a GPU. Its loss kernels stay off: cpo's chunked LM head computes the "
        "log-probs.",
    )
    liger_kernel_config: dict[str, bool] | None = Field(
        default=None,
        description="Arguments of `apply_liger_kernel_to_<model_type>`, e.g. `{rope: true, "
        "rms_norm: true, swiglu: false}`.",
    )
    eval_use_gather_object: bool | None = Field(
        default=False, description="Gather nested Python objects across devices in evaluation."
    )
    average_tokens_across_devices: bool | None = Field(
        default=True,
        description="The NLL term (`cpo_alpha`) as one token-weighted mean over the whole "
        "optimizer step (every process and micro-batch), so that 1 and N processes, or "
        "accumulation and a larger batch, give the same loss. false (or None): TRL's mean per "
        "micro-batch on each process.",
    )

    # --- CPO --------------------------------------------------------------------------------
    max_length: int | None = Field(
        default=1024,
        ge=1,
        description="Longest prompt + answer in tokens; longer pairs are truncated. None: no "
        "limit, no pair is truncated (TRL falls back to 512 instead).",
    )
    max_prompt_length: int | None = Field(
        default=512,
        ge=1,
        description="Longest prompt in tokens when a pair must be truncated (encoder-decoder "
        "models: always); must be below `max_length`. None: the prompt is not cut.",
    )
    max_completion_length: int | None = Field(
        default=None,
        ge=1,
        description="Longest answer in tokens, for encoder-decoder models (decoder-only "
        "answers are bounded by `max_length`). None: answers are not truncated (TRL falls back "
        "to 128 instead).",
    )
    beta: float = Field(
        default=0.1,
        gt=0,
        description="Inverse temperature of the preference loss (for `ipo`: the "
        "regularisation tau; for `hinge`: the reciprocal of the margin).",
    )
    label_smoothing: float = Field(
        default=0.0,
        ge=0,
        le=0.5,
        description="Assumed share of flipped preference labels (conservative loss); "
        "sigmoid-type losses only.",
    )
    loss_type: LossType = Field(
        default="sigmoid", description="Preference loss by its registry name (see docs)."
    )
    disable_dropout: bool = Field(default=True, description="Turn off dropout in the model.")
    cpo_alpha: float = Field(
        default=1.0,
        ge=0,
        description="Weight of the behaviour-cloning NLL on chosen answers; 0 for pure "
        "SimPO/AlphaPO.",
    )
    simpo_gamma: float = Field(
        default=0.5, description="Target reward margin of SimPO (`simpo`, `alphapo`)."
    )
    label_pad_token_id: int = Field(default=-100, description="Label id ignored by the loss.")
    padding_value: int | None = Field(
        default=None, description="Token id used to pad inputs; None: the tokenizer's pad id."
    )
    truncation_mode: TruncationMode = Field(
        default="keep_end",
        description="Which end of a too-long prompt to keep: `keep_end` (its last tokens) or "
        "`keep_start`.",
    )
    generate_during_eval: bool = Field(
        default=False, description="Generate sample answers at each evaluation and log them."
    )
    is_encoder_decoder: bool | None = Field(
        default=None,
        description="Whether the model is encoder-decoder; None: read from its config.",
    )
    model_init_kwargs: dict[str, Any] | None = Field(
        default=None,
        description="Extra `from_pretrained` arguments for the model; a JSON object string "
        "is accepted.",
    )
    dataset_num_proc: int | None = Field(
        default=None, ge=1, description="Worker processes for dataset preparation."
    )

    # --- beyond CPOConfig -------------------------------------------------------------------
    alpha: float = Field(
        default=0.0,
        description="AlphaPO reward shape: the reward becomes (1 - p^-alpha)/alpha with p the "
        "answer's probability; 0 keeps log-probabilities.",
    )
    prefix_sharing: bool = Field(
        default=True,
        description="cpo extension: run each prompt once per pair and attend both answers to "
        "it (same log-probabilities as the plain path, less compute).",
    )
    enable_jit_checkpoint: bool = Field(
        default=True,
        description="cpo extension (TRL 1.16's name): on SIGTERM or SIGUSR1, finish the "
        "current optimizer step, save a checkpoint and exit 143 (SIGTERM) or 138 (SIGUSR1); a "
        "second signal stops at once. False: the first signal stops at once (finished "
        "checkpoints are kept). TRL's default is false; cpo's is true.",
    )
    max_nonfinite_steps: int = Field(
        default=3,
        ge=1,
        description="cpo extension: an optimizer step whose loss or gradient norm is NaN/inf "
        "is skipped (no update); after this many in a row the run stops (exit 4), keeping the "
        "last good checkpoint. Non-finite weights are never saved.",
    )
    logprob_chunk_size: int = Field(
        default=256,
        ge=1,
        description="cpo extension: answer positions per chunk when computing the LM head "
        "and log-softmax (bounds logits memory: chunk x vocab x 4 bytes; 256 measured best "
        "for memory at no speed cost on a 49k vocabulary).",
    )

    mlp_activation_saving: Literal["model", "gate_up", "input"] = Field(
        default="input",
        description="cpo extension: what each SwiGLU MLP keeps for the backward pass when "
        "`gradient_checkpointing` is off (exact in every case). `model`: the model's own MLP "
        "(gate, up, silu(gate) and their product: 4 x intermediate size per token); `gate_up`: "
        "a fused SwiGLU keeps gate and up only and recomputes the rest elementwise (about a "
        "quarter less layer memory, no extra matmul); `input`: selective activation "
        "checkpointing keeps only the MLP's input and runs the MLP again in the backward "
        "(about half the layer memory, one more MLP forward per step).",
    )
    max_tokens_per_batch: int | None = Field(
        default=None,
        ge=1,
        description="cpo extension: build training micro-batches by a token budget instead of "
        "a pair count: pairs are grouped by length and added to a micro-batch while the tokens "
        "it puts through the model (padding included for padded layouts) stay within this "
        "budget; `per_device_train_batch_size` then only caps the pairs per micro-batch. The "
        "longest micro-batch runs first (an out-of-memory error shows at step 1). The loss of "
        "a micro-batch is weighted by its share of the optimizer step's pairs, so an "
        "optimizer step equals one batch of all its pairs. None: batches of "
        "`per_device_train_batch_size` pairs.",
    )

    @field_validator("eval_strategy", "logging_strategy", "save_strategy", mode="before")
    @classmethod
    def _yaml_no_is_a_strategy(cls, value: Any) -> Any:
        """YAML 1.1 reads a bare `no` (as in `training.save_strategy=no`) as false."""
        return "no" if value is False else value

    @field_validator("optim_args")
    @classmethod
    def _optim_args_parse(cls, value: str | None) -> str | None:
        """Kept as the string CPOConfig takes; checked now so a typo fails at load time."""
        parse_optim_args(value)
        return value

    @field_validator(*_JSON_DICT_FIELDS, mode="before")
    @classmethod
    def _json_object_string(cls, value: Any) -> Any:
        """TRL takes these mappings as JSON strings on its command line; so do we."""
        if isinstance(value, str):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON object ({exc.msg})") from None
            if not isinstance(parsed, dict):
                raise ValueError("not a JSON object")
            return parsed
        return value


def cpoconfig_field_names() -> tuple[str, ...]:
    """The CPOConfig fields mirrored here, in order (the extensions excluded)."""
    return tuple(n for n in TrainingConfig.model_fields if n not in CPO_EXTENSIONS)
