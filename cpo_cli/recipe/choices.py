"""The string choices a recipe accepts, as `Literal` types (so validation, the JSON schema and the
docs list them). They follow transformers' own enums of the CPOConfig era; the loss names come
from the single loss registry, the data formats and column names from `cpo_cli.format_names`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

from cpo_cli.format_names import CanonicalColumn, DataFormat, RowFormat
from cpo_cli.losses.registry import LOSS_NAMES

__all__ = ["CanonicalColumn", "DataFormat", "RowFormat"]  # defined with the data format names

# The loss names come from the registry at import time (one list for validation, docs and help);
# a type checker cannot follow that, so it sees a plain `str`.
if TYPE_CHECKING:
    LossType = str
else:
    LossType = Literal[LOSS_NAMES]

TruncationMode = Literal["keep_end", "keep_start"]

IntervalStrategy = Literal["no", "steps", "epoch"]
SaveStrategy = Literal["no", "steps", "epoch", "best"]
HubStrategy = Literal["end", "every_save", "checkpoint", "all_checkpoints"]

SchedulerType = Literal[
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
]

OptimizerName = Literal[
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_torch_xla",
    "adamw_torch_npu_fused",
    "adamw_apex_fused",
    "adafactor",
    "adamw_anyprecision",
    "adamw_torch_4bit",
    "adamw_torch_8bit",
    "ademamix",
    "sgd",
    "adagrad",
    "adamw_bnb_8bit",
    "adamw_8bit",
    "ademamix_8bit",
    "lion_8bit",
    "lion_32bit",
    "paged_adamw_32bit",
    "paged_adamw_8bit",
    "paged_ademamix_32bit",
    "paged_ademamix_8bit",
    "paged_lion_32bit",
    "paged_lion_8bit",
    "rmsprop",
    "rmsprop_bnb",
    "rmsprop_bnb_8bit",
    "rmsprop_bnb_32bit",
    "galore_adamw",
    "galore_adamw_8bit",
    "galore_adafactor",
    "galore_adamw_layerwise",
    "galore_adamw_8bit_layerwise",
    "galore_adafactor_layerwise",
    "lomo",
    "adalomo",
    "grokadamw",
    "schedule_free_radam",
    "schedule_free_adamw",
    "schedule_free_sgd",
    "apollo_adamw",
    "apollo_adamw_layerwise",
    "stable_adamw",
]

#: Optimizers the cpo engine builds (`cpo_cli.engine.optim` takes this list; a test builds each):
#: the torch ones by their HF names, the bitsandbytes ones when bitsandbytes is installed.
ENGINE_OPTIMIZERS: tuple[str, ...] = (
    "adamw_torch",
    "adamw_torch_fused",
    "adafactor",
    "sgd",
    "adagrad",
    "rmsprop",
    "adamw_bnb_8bit",
    "adamw_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "lion_8bit",
    "lion_32bit",
    "paged_lion_8bit",
    "paged_lion_32bit",
    "rmsprop_bnb",
    "rmsprop_bnb_8bit",
    "rmsprop_bnb_32bit",
)

ReportTarget = Literal[
    "none",
    "all",
    "azure_ml",
    "clearml",
    "codecarbon",
    "comet_ml",
    "dagshub",
    "dvclive",
    "flyte",
    "mlflow",
    "neptune",
    "swanlab",
    "tensorboard",
    "trackio",
    "wandb",
]

#: trackers the engine writes to (`cpo_cli.engine.tracking` takes this list)
ENGINE_TRACKERS: tuple[str, ...] = ("tensorboard", "wandb")

LogLevel = Literal["passive", "debug", "info", "warning", "error", "critical"]
DebugOption = Literal["underflow_overflow", "tpu_metrics_debug"]
FsdpOption = Literal[
    "full_shard",
    "shard_grad_op",
    "no_shard",
    "hybrid_shard",
    "hybrid_shard_zero2",
    "offload",
    "auto_wrap",
]
HalfPrecisionBackend = Literal["auto", "apex", "cpu_amp"]
IncludeForMetrics = Literal["inputs", "loss"]
RayScope = Literal["last", "all"]
DdpBackend = Literal["nccl", "gloo", "mpi", "ccl", "hccl", "cncl", "mccl", "xccl"]
TorchCompileMode = Literal[
    "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
]

ModelDtype = Literal["auto", "float32", "bfloat16", "float16"]
AttnImplementation = Literal[
    "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"
]
LoraBias = Literal["none", "all", "lora_only"]


#: `builtin:NAME` models cpo ships for offline use, and the Hub model each one is
BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS: dict[str, str] = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def builtin_model(name_or_path: str) -> str | None:
    """The builtin name a `builtin:` value means (case and spaces ignored); None otherwise."""
    if not name_or_path.startswith(BUILTIN_PREFIX):
        return None
    return name_or_path[len(BUILTIN_PREFIX) :].strip().lower()


def unknown_builtin(name_or_path: str) -> str | None:
    """Why a `builtin:` value names no model cpo ships (None: fine, or not a builtin)."""
    name = builtin_model(name_or_path)
    if name is None or name in BUILTIN_MODELS:
        return None
    shipped = ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_MODELS)
    return f"{name_or_path!r} is not a builtin model; builtin models: {shipped}"


def choices(literal: object) -> tuple[str, ...]:
    """The allowed values of a `Literal` type, in order."""
    return tuple(get_args(literal))
