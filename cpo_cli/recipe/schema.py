"""The recipe: four fixed top-level sections (`model`, `data`, `peft`, `training`) so scripts and
docs can rely on the keys. Unknown keys are refused everywhere (`extra="forbid"`)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    field_validator,
)

from cpo_cli.format_names import (
    CANONICAL_COLUMNS,
    FORMAT_MEANINGS,
    AlmaScorer,
    ChatTemplateUse,
)
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
    """One dataset: a Hub name, a local file (.jsonl/.json/.parquet/.csv, optionally compressed
    .gz/.bz2/.zst/.xz), a glob of such files, a folder laid out like a Hub snapshot, a
    `save_to_disk` folder or a folder written by `cpo prepare`."""

    model_config = _STRICT

    path: str = Field(
        min_length=1,
        description="Hub dataset name, local file, glob pattern (`data/train-*.parquet`) or "
        "folder (a Hub snapshot: `data/{split}-*.parquet`, `{split}.jsonl`, config folders).",
    )
    split: str = Field(default="train", description="Split to read.")
    subset: str | None = Field(
        default=None,
        description="Dataset configuration (subset) name: a Hub config, a config of a "
        "snapshot folder's README, or a sub-folder of a local folder.",
    )
    revision: str | None = Field(
        default=None, description="Hub branch, tag or commit of the dataset."
    )
    format: DataFormat = Field(
        default="auto",
        description="Row format: "
        + "; ".join(f"`{name}`: {meaning}" for name, meaning in FORMAT_MEANINGS.items())
        + ".",
    )
    columns: dict[CanonicalColumn, str] = Field(
        default_factory=dict,
        description="Canonical name -> dataset column, for datasets with other column names; "
        "a dotted path reads inside structs and through lists of structs "
        "(`scores: completions.overall_score`). Canonical names: "
        + ", ".join(CANONICAL_COLUMNS)
        + ".",
    )
    max_rows: int | None = Field(
        default=None, ge=1, description="Use only the first this many rows (quick runs)."
    )
    chat_template: ChatTemplateUse = Field(
        default="auto",
        description="How text rows meet the tokenizer's chat template. `auto` (TRL's "
        "behaviour): text rows are used as they are, unless the source has a `system` column "
        "and the tokenizer a chat template, in which case every text row is rendered as a "
        "conversation; `always`: text rows become a user turn and assistant answers, rendered "
        "with the chat template (an instruct model trained in its own format); `never`: text "
        "rows are never templated (a system prompt is joined to the prompt as text). "
        "Conversational rows always use the chat template.",
    )
    directions: list[str] | None = Field(
        default=None,
        description="alma_r: translation directions to build pairs for, e.g. [de-en, en-de]; "
        "None: both directions of each row's language pair.",
    )
    scorer: AlmaScorer = Field(
        default="kiwi_xcomet",
        description="alma_r: which score fields rank the candidates (`{system}_{lang}_{scorer}`).",
    )
    max_row_bytes: int = Field(
        default=2 * 1024 * 1024,
        ge=1,
        description="Rows whose text fields add up to more than this many bytes (UTF-8; 2 MiB "
        "is ~500k tokens, far past any max_length) are dropped (`too_long`) before tokenising: "
        "tokenising costs ~100x a row's size in memory, so one runaway row cannot exhaust it.",
    )
    weight: float = Field(
        default=1.0,
        gt=0,
        description="In a list of sources (a mixture): how many of this source's pairs to use, "
        "as a multiple of its usable pairs: below 1 a seeded random subset, above 1 repeated.",
    )

    @field_validator("directions", mode="before")
    @classmethod
    def _directions_text(cls, value: Any) -> Any:
        """`directions: de-en,en-de` is short for `[de-en, en-de]`."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("directions")
    @classmethod
    def _directions_shape(cls, value: list[str] | None) -> list[str] | None:
        for direction in value or []:
            parts = direction.split("-")
            if len(parts) != 2 or not all(parts):
                raise ValueError(f"{direction!r} is not a direction like de-en (source-target)")
        return value


def _one_or_many(value: Any) -> str:
    return "list[DataSource]" if isinstance(value, list) else "DataSource"


#: One source or a list of them; validated as the one the value looks like (so an error is
#: reported once, against the shape the user wrote).
Sources = Annotated[
    Annotated[DataSource, Tag("DataSource")] | Annotated[list[DataSource], Tag("list[DataSource]")],
    Discriminator(_one_or_many),
]


def _source_shorthand(value: Any) -> Any:
    """A string is short for `{path: ...}`, in a single source or in a list of them."""
    if isinstance(value, str):
        return {"path": value}
    if isinstance(value, list):
        return [{"path": v} if isinstance(v, str) else v for v in value]
    return value


class DataSection(BaseModel):
    """`data:` — the training and evaluation datasets. Each is one source or a list of sources
    (a mixture, each with its own settings and `weight`); a string is short for `{path: ...}`."""

    model_config = _STRICT

    train: Sources | None = Field(
        default=None, description="Training preference data (a source or a list of sources)."
    )
    eval: Sources | None = Field(
        default=None,
        description="Evaluation preference data (needed by `training.eval_strategy`).",
    )

    @field_validator("train", "eval", mode="before")
    @classmethod
    def _path_shorthand(cls, value: Any) -> Any:
        """`train: data.jsonl` is short for `train: {path: data.jsonl}`."""
        return _source_shorthand(value)

    @field_validator("train", "eval")
    @classmethod
    def _non_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("at least one source (or no data.train/data.eval key at all)")
        return value


def sources_of(value: DataSource | list[DataSource] | None) -> list[DataSource]:
    """The sources of `data.train` / `data.eval` as a list (empty when unset)."""
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


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
