"""The recipe: four fixed top-level sections (`model`, `data`, `peft`, `training`) so scripts and
docs can rely on the keys. Unknown keys are refused everywhere (`extra="forbid"`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from cpo_cli.format_names import CANONICAL_COLUMNS
from cpo_cli.recipe.choices import (
    AttnImplementation,
    CanonicalColumn,
    DataFormat,
    LoraBias,
    ModelDtype,
)
from cpo_cli.recipe.training import TrainingConfig

_STRICT = ConfigDict(extra="forbid", coerce_numbers_to_str=True, validate_assignment=True)


class ModelSection(BaseModel):
    """`model:` — what to load and how."""

    model_config = _STRICT

    name_or_path: str = Field(
        min_length=1, description="Hub model id (`org/name`) or local folder of the model."
    )
    revision: str | None = Field(
        default=None,
        description="Hub branch, tag or commit of the model; None: the default branch.",
    )
    gguf_file: str | None = Field(
        default=None,
        description="A GGUF file inside `name_or_path` (or a path to one); it is dequantised "
        "to a normal checkpoint on load.",
    )
    tokenizer_name_or_path: str | None = Field(
        default=None, description="Tokenizer to use; None: the model's own."
    )
    dtype: ModelDtype = Field(
        default="float32",
        description="dtype of the loaded weights: float32 (as the seed's `from_pretrained` "
        "loaded them; mixed precision comes from `training.bf16`/`fp16`), bfloat16, float16, "
        "or `auto` (the checkpoint's).",
    )
    attn_implementation: AttnImplementation | None = Field(
        default=None,
        description="Attention kernel; None: transformers' default (sdpa where supported).",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Run model/tokenizer code shipped with the checkpoint. Only for sources "
        "you trust.",
    )
    chat_template: str | None = Field(
        default=None,
        description="Chat template replacing the tokenizer's: Jinja text, or a path to a "
        "`.jinja` file.",
    )


class DataSource(BaseModel):
    """One dataset: a Hub name, a local file (.jsonl/.json/.parquet/.csv), a `save_to_disk`
    folder or a folder written by `cpo prepare`."""

    model_config = _STRICT

    path: str = Field(min_length=1, description="Hub dataset name, local file or folder.")
    split: str = Field(default="train", description="Split to read.")
    subset: str | None = Field(default=None, description="Dataset configuration (subset) name.")
    revision: str | None = Field(
        default=None, description="Hub branch, tag or commit of the dataset."
    )
    format: DataFormat = Field(
        default="auto",
        description="Row format: `standard` (prompt/chosen/rejected strings), "
        "`conversational` (message lists), `implicit` (chosen/rejected conversations sharing "
        "their leading turns), `scored` (candidates with scores, ALMA-R style), `prepared` "
        "(a `cpo prepare` folder), or `auto` to detect it.",
    )
    columns: dict[CanonicalColumn, str] = Field(
        default_factory=dict,
        description="Canonical name -> dataset column, for datasets with other column names "
        f"(canonical: {', '.join(CANONICAL_COLUMNS)}).",
    )
    max_rows: int | None = Field(
        default=None, ge=1, description="Use only the first this many rows (quick runs)."
    )


class DataSection(BaseModel):
    """`data:` — the training and evaluation datasets (a string is short for `{path: ...}`)."""

    model_config = _STRICT

    train: DataSource | None = Field(default=None, description="Training preference data.")
    eval: DataSource | None = Field(
        default=None, description="Evaluation preference data (needed by `training.eval_strategy`)."
    )

    @field_validator("train", "eval", mode="before")
    @classmethod
    def _path_shorthand(cls, value: Any) -> Any:
        """`train: data.jsonl` is short for `train: {path: data.jsonl}`."""
        return {"path": value} if isinstance(value, str) else value


class PeftSection(BaseModel):
    """`peft:` — LoRA adapters (needs the `peft` extra). Absent: full fine-tuning."""

    model_config = _STRICT

    r: int = Field(default=16, ge=1, description="LoRA rank.")
    lora_alpha: float = Field(
        default=32, gt=0, description="LoRA scaling numerator (scale = alpha/r)."
    )
    lora_dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | str | None = Field(
        default=None,
        description="Module names (or `all-linear`, or a regex) to adapt; None: peft's "
        "default for the architecture.",
    )
    bias: LoraBias = Field(
        default="none", description="Which biases to train: none, all, lora_only."
    )
    modules_to_save: list[str] | None = Field(
        default=None,
        description="Modules trained in full and saved with the adapter (e.g. lm_head).",
    )
    merge_at_end: bool = Field(
        default=False, description="Merge the adapters into the base weights when training ends."
    )


class Recipe(BaseModel):
    """A cpo recipe."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, title="cpo recipe", protected_namespaces=()
    )

    model: ModelSection = Field(description="The model to train.")
    data: DataSection = Field(default_factory=DataSection, description="The datasets.")
    peft: PeftSection | None = Field(
        default=None, description="LoRA adapters; absent: full fine-tune."
    )
    training: TrainingConfig = Field(
        default_factory=TrainingConfig,
        description="Every CPOConfig field (same names and defaults), plus cpo's own.",
    )

    #: dotted paths whose values came from secret-looking environment variables (set by the
    #: loader; used by `to_yaml`/`redacted_dict` so such values are never printed or saved)
    _secret_paths: frozenset[str] = PrivateAttr(default_factory=frozenset)
