"""The distributed fields of a recipe, read the way HF Trainer users write them: `fsdp` +
`fsdp_config` (FSDP) and `deepspeed` (a ZeRO config file or mapping), checked when the recipe
loads and turned into plain requests that the engine maps onto accelerate's plugins.

Torch-free, so `cpo recipe validate` reports every problem without importing accelerate.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpo_cli.recipe.training import TrainingConfig

SHARDING_OPTIONS = ("full_shard", "shard_grad_op", "no_shard", "hybrid_shard", "hybrid_shard_zero2")
FSDP_OPTIONS = (*SHARDING_OPTIONS, "offload", "auto_wrap")
STATE_DICT_TYPES = ("SHARDED_STATE_DICT", "FULL_STATE_DICT")
BACKWARD_PREFETCH = ("BACKWARD_PRE", "BACKWARD_POST", "NO_PREFETCH")

#: `fsdp_config` keys (as HF Trainer reads them, with or without the `fsdp_` prefix) → kind
_FSDP_KEYS: dict[str, str] = {
    "version": "version",
    "min_num_params": "int",
    "transformer_layer_cls_to_wrap": "names",
    "reshard_after_forward": "bool",
    "state_dict_type": "state_dict_type",
    "offload_params": "bool",
    "activation_checkpointing": "bool",
    "cpu_ram_efficient_loading": "bool",
    "backward_prefetch": "backward_prefetch",
    "forward_prefetch": "bool",
    "limit_all_gathers": "bool",
    "use_orig_params": "bool",
    "sync_module_states": "bool",
}
#: `fsdp_config` keys that only FSDP1 reads
_FSDP1_ONLY = (
    "backward_prefetch",
    "forward_prefetch",
    "limit_all_gathers",
    "use_orig_params",
    "sync_module_states",
)
_XLA_KEYS = ("xla", "xla_fsdp_settings", "xla_fsdp_grad_ckpt", "xla_fsdp_v2")

SAVE_ON_EACH_NODE_SHARDED = (
    "training.save_on_each_node is not supported with FSDP/DeepSpeed: the model and optimizer "
    "state are sharded over every process, so no single node's disk would hold a checkpoint "
    "it could resume from; put training.output_dir on a filesystem all nodes share and "
    "remove save_on_each_node"
)


@dataclass(frozen=True)
class FsdpRequest:
    """What `fsdp` / `fsdp_config` ask for, normalised (FSDP2 unless `version: 1`)."""

    version: int = 2
    sharding: str = "full_shard"
    offload: bool = False
    auto_wrap: bool = False
    layer_classes: tuple[str, ...] = ()
    min_num_params: int = 0
    state_dict_type: str = "SHARDED_STATE_DICT"
    activation_checkpointing: bool = False
    cpu_ram_efficient_loading: bool = False
    #: FSDP1-only switches that were set, passed on as accelerate names them
    fsdp1_options: dict[str, Any] = field(default_factory=dict)

    @property
    def reshard_after_forward(self) -> bool:
        """FSDP2: full_shard frees the gathered parameters after each forward (ZeRO-3 like);
        shard_grad_op keeps them until the backward (ZeRO-2 like)."""
        return self.sharding != "shard_grad_op"

    def describe(self) -> str:
        parts = [self.sharding.replace("_", " ")]
        if self.offload:
            parts.append("CPU offload")
        return f"FSDP{self.version} ({', '.join(parts)})"


@dataclass(frozen=True)
class DeepSpeedRequest:
    """A DeepSpeed config (`deepspeed`: a JSON file or a mapping) and its ZeRO stage."""

    config: dict[str, Any]
    source: str
    stage: int


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _json_object(value: Any, name: str, errors: list[str]) -> dict[str, Any] | None:
    """A mapping as given, or the JSON object in the file a string names."""
    if value is None:
        return None
    if isinstance(value, dict):
        return dict(value)
    path = Path(str(value)).expanduser()
    if not path.is_file():
        errors.append(
            f"training.{name}: {str(value)!r} is not a file; give a JSON file path or a mapping"
        )
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        errors.append(f"training.{name}: {path} is not valid JSON ({exc})")
        return None
    if not isinstance(data, dict):
        errors.append(f"training.{name}: {path} holds {type(data).__name__}, not a JSON object")
        return None
    return data


def _fsdp_tokens(value: Any) -> list[str]:
    if not value:
        return []
    if isinstance(value, str):
        return value.split()
    return [str(v) for v in value]


def parse_fsdp(training: TrainingConfig, errors: list[str]) -> FsdpRequest | None:
    """The FSDP the recipe asks for (None: none), appending every problem to `errors`."""
    tokens = _fsdp_tokens(training.fsdp)
    config = _json_object(training.fsdp_config, "fsdp_config", errors) or {}
    legacy = {
        "min_num_params": training.fsdp_min_num_params or None,
        "transformer_layer_cls_to_wrap": training.fsdp_transformer_layer_cls_to_wrap,
    }
    if not tokens:
        set_here = [n for n, v in (("fsdp_config", config), *legacy.items()) if v]
        for name in set_here:
            key = name if name == "fsdp_config" else f"fsdp_{name}"
            errors.append(
                f"training.{key} is set but training.fsdp is empty, so FSDP is off; set "
                "training.fsdp (e.g. 'full_shard auto_wrap') or remove it"
            )
        return None
    unknown = [t for t in tokens if t not in FSDP_OPTIONS]
    for token in unknown:
        close = difflib.get_close_matches(token, FSDP_OPTIONS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        errors.append(
            f"training.fsdp: unknown option {token!r}; choose from {', '.join(FSDP_OPTIONS)}{hint}"
        )
    shardings = [t for t in tokens if t in SHARDING_OPTIONS]
    if len(shardings) > 1:
        errors.append(f"training.fsdp: one sharding option at most; got {', '.join(shardings)}")

    options: dict[str, Any] = {}
    for raw_key, value in config.items():
        key = str(raw_key).removeprefix("fsdp_")
        where = f"training.fsdp_config.{raw_key}"
        if key in _XLA_KEYS:
            errors.append(f"{where}: PyTorch/XLA FSDP is not supported by cpo")
            continue
        kind = _FSDP_KEYS.get(key)
        if kind is None:
            close = difflib.get_close_matches(key, list(_FSDP_KEYS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            errors.append(f"{where}: unknown key; known keys: {', '.join(_FSDP_KEYS)}{hint}")
            continue
        parsed = _fsdp_value(kind, value, where, errors)
        if parsed is not None:
            options[key] = parsed
    for key, value in legacy.items():
        if value is None:
            continue
        if key in options:
            errors.append(
                f"training.fsdp_{key} and training.fsdp_config.{key} are both set; keep one "
                "(fsdp_config is the current place)"
            )
        else:
            options[key] = _fsdp_value(_FSDP_KEYS[key], value, f"training.fsdp_{key}", errors)

    version = int(options.get("version", 2))
    sharding = shardings[0] if shardings else "full_shard"
    if version == 2 and sharding in ("no_shard", "hybrid_shard", "hybrid_shard_zero2"):
        errors.append(
            f"training.fsdp: {sharding!r} is an FSDP1 strategy; with FSDP2 (the default) use "
            "full_shard or shard_grad_op, or set training.fsdp_config.version: 1"
        )
    if "reshard_after_forward" in options:
        if version != 2:
            errors.append("training.fsdp_config.reshard_after_forward: FSDP2 only (version: 2)")
        elif shardings:
            errors.append(
                "training.fsdp_config.reshard_after_forward and a sharding option in "
                "training.fsdp say the same thing; keep one"
            )
        else:
            sharding = "full_shard" if options["reshard_after_forward"] else "shard_grad_op"
    if version == 2:
        for key in _FSDP1_ONLY:
            if key in options:
                errors.append(
                    f"training.fsdp_config.{key}: an FSDP1 setting that FSDP2 does not have; "
                    "remove it or set training.fsdp_config.version: 1"
                )
    if options.get("min_num_params") and options.get("transformer_layer_cls_to_wrap"):
        errors.append(
            "training.fsdp_config: min_num_params and transformer_layer_cls_to_wrap are both "
            "set; choose one auto-wrap policy"
        )
    auto_wrap = "auto_wrap" in tokens or bool(
        options.get("min_num_params") or options.get("transformer_layer_cls_to_wrap")
    )
    if options.get("activation_checkpointing") and training.gradient_checkpointing:
        errors.append(
            "training.fsdp_config.activation_checkpointing and training.gradient_checkpointing "
            "are both on; keep one (FSDP's activation checkpointing avoids a redundant "
            "all-gather in the backward)"
        )
    return FsdpRequest(
        version=version,
        sharding=sharding,
        offload="offload" in tokens or bool(options.get("offload_params")),
        auto_wrap=auto_wrap,
        layer_classes=tuple(options.get("transformer_layer_cls_to_wrap") or ()),
        min_num_params=int(options.get("min_num_params") or 0),
        state_dict_type=str(options.get("state_dict_type", "SHARDED_STATE_DICT")),
        activation_checkpointing=bool(options.get("activation_checkpointing")),
        cpu_ram_efficient_loading=bool(options.get("cpu_ram_efficient_loading")),
        fsdp1_options={k: options[k] for k in _FSDP1_ONLY if k in options},
    )


def _fsdp_value(kind: str, value: Any, where: str, errors: list[str]) -> Any:
    if kind == "bool":
        parsed = _bool(value)
        if parsed is None:
            errors.append(f"{where}: got {value!r}; expected true or false")
        return parsed
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            errors.append(f"{where}: got {value!r}; expected a whole number >= 0")
            return None
        return value
    if kind == "version":
        if value not in (1, 2, "1", "2"):
            errors.append(f"{where}: got {value!r}; expected 1 or 2")
            return None
        return int(value)
    if kind == "names":
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            errors.append(f"{where}: got {value!r}; expected a class name or a list of them")
            return None
        return [n for name in names for n in name.split(",") if n.strip()]
    choices = STATE_DICT_TYPES if kind == "state_dict_type" else BACKWARD_PREFETCH
    text = str(value).upper()
    if text not in choices:
        errors.append(f"{where}: got {value!r}; expected one of {', '.join(choices)}")
        return None
    return text


def parse_deepspeed(training: TrainingConfig, errors: list[str]) -> DeepSpeedRequest | None:
    """The DeepSpeed config the recipe names (None: none), checked by `check_deepspeed_config`."""
    config = _json_object(training.deepspeed, "deepspeed", errors)
    if config is None:
        return None
    inline = isinstance(training.deepspeed, dict)
    source = "training.deepspeed" if inline else str(training.deepspeed)
    stage = check_deepspeed_config(config, training, "training.deepspeed", errors)
    return DeepSpeedRequest(config=config, source=source, stage=stage)


def check_deepspeed_config(
    config: dict[str, Any], training: TrainingConfig, where: str, errors: list[str]
) -> int:
    """Check a DeepSpeed config against the recipe (the recipe's own `deepspeed`, or the one an
    `accelerate launch` config brings) and return its ZeRO stage. Values that cpo takes from
    other recipe fields must be "auto" or agree with them; `optimizer`/`scheduler` sections are
    refused, because cpo builds those from `optim` and `lr_scheduler_type`."""
    for section, owner in (("optimizer", "optim"), ("scheduler", "lr_scheduler_type")):
        if section in config:
            errors.append(
                f"{where}: the {section!r} section is not supported; cpo builds the "
                f"{section} from training.{owner} (remove the section)"
            )
    zero = config.get("zero_optimization") or {}
    stage = zero.get("stage", 0) if isinstance(zero, dict) else None
    if stage not in (0, 1, 2, 3):
        errors.append(f"{where}: zero_optimization.stage is {stage!r}; expected 0, 1, 2 or 3")
        stage = 0
    must_agree = {
        "train_micro_batch_size_per_gpu": (
            "per_device_train_batch_size",
            training.per_device_train_batch_size,
        ),
        "gradient_accumulation_steps": (
            "gradient_accumulation_steps",
            training.gradient_accumulation_steps,
        ),
        "gradient_clipping": ("max_grad_norm", training.max_grad_norm),
    }
    for key, (field_name, value) in must_agree.items():
        given = config.get(key, "auto")
        if given != "auto" and given != value:
            errors.append(
                f"{where}: {key} is {given!r} but training.{field_name} is "
                f'{value!r}; set it to "auto" (cpo fills it in) or make them agree'
            )
    for section, field_name in (("fp16", "fp16"), ("bf16", "bf16"), ("bfloat16", "bf16")):
        enabled = (config.get(section) or {}).get("enabled", "auto")
        wanted = bool(getattr(training, field_name))
        if enabled != "auto" and bool(enabled) != wanted:
            errors.append(
                f"{where}: {section}.enabled is {enabled!r} but training."
                f'{field_name} is {wanted}; set it to "auto" or make them agree'
            )
    if stage == 3 and zero.get("stage3_gather_16bit_weights_on_model_save") is False:
        errors.append(
            f"{where}: ZeRO-3 with stage3_gather_16bit_weights_on_model_save false "
            "cannot write the Hugging Face model folder cpo saves at every checkpoint and at "
            "the end; set it to true (or leave it out)"
        )
    return int(stage)


def check_distributed(training: TrainingConfig, errors: list[str], warnings: list[str]) -> None:
    """Every problem of the distributed fields, for the recipe rules."""
    fsdp = parse_fsdp(training, errors)
    deepspeed = parse_deepspeed(training, errors)
    if fsdp is not None and deepspeed is not None:
        errors.append("training.fsdp and training.deepspeed are both set; choose one")
    sharded = fsdp is not None or deepspeed is not None
    if sharded and training.save_on_each_node:
        errors.append(SAVE_ON_EACH_NODE_SHARDED)
    if sharded:
        ddp_only = [
            name
            for name in ("ddp_find_unused_parameters", "ddp_bucket_cap_mb", "ddp_broadcast_buffers")
            if getattr(training, name) is not None
        ]
        for name in ddp_only:
            warnings.append(
                f"training.{name} is set but FSDP/DeepSpeed run instead of DDP, so it has no effect"
            )
