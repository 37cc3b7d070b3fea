"""The model card (README.md) for `cpo push`, built from what a training run left in its output
folder: the resolved recipe, the final metrics and the PEFT adapter config. Pure reading and
string building, no network: `--dry-run` shows exactly the card that would be uploaded.

Everything read here is optional: a folder without metrics or recipe still gets a card, with the
missing parts said plainly rather than invented."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cpo_cli.recipe.choices import BUILTIN_MODELS, BUILTIN_PREFIX

#: Where the engine may leave the resolved recipe, in the order we look.
RECIPE_FILE_NAMES = ("recipe.yaml", "resolved_recipe.yaml", "cpo_recipe.yaml", "recipe.yml")
#: Final metrics summaries, in the order we look: the engine's `train_results.json`
#: ({"global_step", ..., "metrics": {...}}), then other common names.
METRICS_FILE_NAMES = (
    "train_results.json",
    "final_metrics.json",
    "all_results.json",
    "metrics.json",
    "eval_results.json",
)
#: The per-log-step stream the engine always writes; the last records are a fallback.
METRICS_STREAM_NAME = "metrics.jsonl"

#: Training fields shown in the card, when the recipe sets them.
_HYPERPARAMETERS = (
    "loss_type",
    "beta",
    "cpo_alpha",
    "simpo_gamma",
    "alpha",
    "label_smoothing",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_ratio",
    "warmup_steps",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "optim",
    "max_length",
    "max_prompt_length",
    "seed",
    "bf16",
    "fp16",
)
#: Shown only when the recipe's loss reads them (the registry's knobs).
_LOSS_KNOBS = ("simpo_gamma", "alpha", "label_smoothing")
#: Shown only when set to something other than "off".
_SHOWN_WHEN_ON = ("warmup_ratio", "warmup_steps", "weight_decay", "bf16", "fp16")
#: cpo's builtin model names and the Hub models they are (for metadata and license).
BUILTIN_HUB_IDS = {BUILTIN_PREFIX + name: hub_id for name, hub_id in BUILTIN_MODELS.items()}
_PEFT_FIELDS = ("r", "lora_alpha", "lora_dropout", "target_modules", "merge_at_end")
#: Metric keys shown in the card's table (when present), in this order.
_CARD_METRICS = (
    "train_loss",
    "loss",
    "eval_loss",
    "eval_rewards/accuracies",
    "eval_rewards/margins",
    "eval_rewards/chosen",
    "eval_rewards/rejected",
    "eval_logps/chosen",
    "eval_logps/rejected",
    "eval_nll_loss",
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class CardInputs:
    """What the card says; every field may be unknown (None / empty)."""

    repo_id: str
    base_model: str | None = None
    base_model_revision: str | None = None
    gguf_file: str | None = None
    datasets: list[str] = field(default_factory=list)
    loss_type: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    peft: dict[str, Any] = field(default_factory=dict)
    is_adapter: bool = False
    train_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    metrics_source: str | None = None
    license: str | None = None
    recipe_file: str | None = None
    #: the cpo builtin name the base model was given as, e.g. builtin:smollm2-135m-instruct
    builtin: str | None = None


def is_hub_id(name: str | None) -> bool:
    """True for `org/name` style Hub ids (not local paths), which the card metadata may link."""
    if not name or name.startswith((".", "/", "~")) or Path(name).exists():
        return False
    if Path(name).suffix.lower() in {".json", ".jsonl", ".csv", ".parquet", ".gguf", ".yaml"}:
        return False
    return bool(_HUB_ID.match(name))


def find_recipe_file(output_dir: Path) -> Path | None:
    """The resolved recipe the engine saved beside the model, if any."""
    for name in RECIPE_FILE_NAMES:
        if (output_dir / name).is_file():
            return output_dir / name
    for path in sorted([*output_dir.glob("*.yaml"), *output_dir.glob("*.yml")]):
        data = _read_yaml(path)
        if isinstance(data, dict) and "training" in data and "model" in data:
            return path
    return None


def read_recipe_dict(path: Path | None) -> dict[str, Any]:
    """The saved recipe as plain data ({} when missing or unreadable)."""
    data = _read_yaml(path) if path else None
    return data if isinstance(data, dict) else {}


def read_final_metrics(output_dir: Path) -> tuple[dict[str, float], str | None]:
    """Final numeric metrics and the file they came from: a summary JSON if the run wrote one,
    else the last training and last evaluation records of `metrics.jsonl`."""
    for name in METRICS_FILE_NAMES:
        path = output_dir / name
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            flat = _numeric_items(data)
            if flat:
                return flat, name
    stream = output_dir / METRICS_STREAM_NAME
    if stream.is_file():
        merged: dict[str, float] = {}
        for line in stream.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            merged.update(_numeric_items(record))  # later records win: the final values
        if merged:
            return merged, METRICS_STREAM_NAME
    return {}, None


def _numeric_items(data: Any) -> dict[str, float]:
    """Numeric leaves of a metrics JSON; nested `metrics` / `train` / `eval` objects are
    flattened, with `eval_` kept on evaluation keys."""
    out: dict[str, float] = {}
    if not isinstance(data, Mapping):
        return out
    for key, value in data.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out[str(key)] = float(value)
        elif isinstance(value, Mapping) and key in ("metrics", "train", "eval", "final"):
            for sub_key, sub_value in _numeric_items(value).items():
                name = sub_key
                if key == "eval" and not sub_key.startswith("eval_"):
                    name = f"eval_{sub_key}"
                out[name] = sub_value
    return out


def read_base_license(model_section: Mapping[str, Any]) -> str | None:
    """The base model's license where it is known offline: the `license:` of a local model
    folder's README front matter, of a Hub card already in the local cache, or the
    `general.license` of a GGUF file. Never a network call."""
    name = model_section.get("name_or_path")
    if not isinstance(name, str) or not name:
        return None
    if name == "builtin:smollm2-135m-instruct":
        try:
            from cpo_cli.assets.smollm2 import find_smollm2_gguf

            return _license_from_gguf(find_smollm2_gguf())
        except Exception:  # the package is not installed here: license unknown
            return None
    local = Path(name).expanduser()
    if local.is_dir():
        found = (
            _license_from_card((local / "README.md").read_text(encoding="utf-8"))
            if (local / "README.md").is_file()
            else None
        )
        if found:
            return found
        gguf_file = model_section.get("gguf_file")
        if isinstance(gguf_file, str) and gguf_file:
            return _license_from_gguf(local / gguf_file)
        return None
    if local.suffix == ".gguf":
        return _license_from_gguf(local)
    if is_hub_id(name):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "README.md")
        except Exception:  # a cache we cannot read is just "unknown"
            return None
        if isinstance(cached, str) and Path(cached).is_file():
            return _license_from_card(Path(cached).read_text(encoding="utf-8"))
    return None


def _license_from_card(text: str) -> str | None:
    if not text.startswith("---"):
        return None
    parts = text.split("---", 2)
    if len(parts) < 3:
        return None
    try:
        meta = yaml.safe_load(parts[1])
    except yaml.YAMLError:
        return None
    value = meta.get("license") if isinstance(meta, dict) else None
    return str(value) if value else None


def _license_from_gguf(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        from gguf import GGUFReader  # optional extra

        reader = GGUFReader(str(path))
        license_field = reader.get_field("general.license")
        if license_field is None:
            return None
        return str(license_field.contents()) or None
    except Exception:  # gguf missing or an unreadable file: license unknown
        return None


def collect_card_inputs(output_dir: Path, repo_id: str) -> CardInputs:
    """Everything the card needs, read from a trained output folder."""
    recipe_path = find_recipe_file(output_dir)
    recipe = read_recipe_dict(recipe_path)
    model = recipe.get("model") or {}
    training = recipe.get("training") or {}
    data = recipe.get("data") or {}
    peft = recipe.get("peft") or {}

    inputs = CardInputs(repo_id=repo_id, recipe_file=recipe_path.name if recipe_path else None)
    adapter_config = output_dir / "adapter_config.json"
    if adapter_config.is_file():
        inputs.is_adapter = True
        try:
            adapter = json.loads(adapter_config.read_text(encoding="utf-8"))
            inputs.base_model = adapter.get("base_model_name_or_path") or None
        except ValueError:
            pass
    if isinstance(model, Mapping):
        name = model.get("name_or_path") or inputs.base_model
        inputs.base_model = BUILTIN_HUB_IDS.get(str(name), name)
        if inputs.base_model != name:
            inputs.builtin = str(name)
        inputs.base_model_revision = model.get("revision") or None
        inputs.gguf_file = model.get("gguf_file") or None
        inputs.license = read_base_license(model)
    if isinstance(data, Mapping):
        for split in ("train", "eval"):
            source = data.get(split)
            if isinstance(source, Mapping) and source.get("path"):
                path = str(source["path"])
                if path not in inputs.datasets:
                    inputs.datasets.append(path)
    if isinstance(training, Mapping):
        inputs.loss_type = training.get("loss_type") or None
        inputs.hyperparameters = shown_hyperparameters(training)
    if isinstance(peft, Mapping):
        inputs.peft = {k: peft[k] for k in _PEFT_FIELDS if peft.get(k) is not None}
    metrics, source = read_final_metrics(output_dir)
    inputs.metrics_source = source
    inputs.eval_metrics = {k: v for k, v in metrics.items() if k.startswith("eval_")}
    inputs.train_metrics = {k: v for k, v in metrics.items() if not k.startswith("eval_")}
    return inputs


def shown_hyperparameters(training: Mapping[str, Any]) -> dict[str, Any]:
    """The training fields worth a reader's time: loss knobs only for a loss that reads them,
    warmup/decay/precision only when on, epochs or max_steps (whichever bounds the run)."""
    from cpo_cli.losses.registry import LOSSES

    spec = LOSSES.get(str(training.get("loss_type")))
    knobs = set(spec.knobs) if spec else set(_LOSS_KNOBS)
    # AlphaPO's reward transform applies to every loss: shown when on, or for alphapo itself
    if training.get("alpha") or training.get("loss_type") == "alphapo":
        knobs.add("alpha")
    max_steps = training.get("max_steps")
    bounded_by_steps = isinstance(max_steps, int) and max_steps > 0
    shown: dict[str, Any] = {}
    for key in _HYPERPARAMETERS:
        value = training.get(key)
        if value is None:
            continue
        if key in _LOSS_KNOBS and key not in knobs:
            continue
        if key in _SHOWN_WHEN_ON and not value:
            continue
        if key == "max_steps" and not bounded_by_steps:
            continue
        if key == "num_train_epochs" and bounded_by_steps:
            continue
        shown[key] = value
    return shown


def card_tags(inputs: CardInputs) -> list[str]:
    tags = ["cpo", "preference-optimization"]
    if inputs.loss_type:
        tags.append(inputs.loss_type)
    if inputs.is_adapter:
        tags += ["peft", "lora"]
    return tags


def render_model_card(inputs: CardInputs, *, cpo_version: str) -> str:
    """The README.md text: YAML metadata the Hub indexes, then a human-readable body."""
    meta: dict[str, Any] = {}
    if is_hub_id(inputs.base_model):
        meta["base_model"] = inputs.base_model
    hub_datasets = [d for d in inputs.datasets if is_hub_id(d)]
    if hub_datasets:
        meta["datasets"] = hub_datasets
    if inputs.license:
        meta["license"] = inputs.license
    meta["library_name"] = "peft" if inputs.is_adapter else "transformers"
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = card_tags(inputs)

    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", ""]
    title = inputs.repo_id.split("/")[-1]
    loss = inputs.loss_type or "unknown"
    lines += [
        f"# {title}",
        "",
        f"Preference-tuned with [cpo](https://pypi.org/project/cpo-cli/) {cpo_version} using "
        f"Contrastive Preference Optimization (loss `{loss}`, "
        "[Xu et al. 2024](https://arxiv.org/abs/2401.08417)).",
        "",
        "## Base model and data",
        "",
        f"- Base model: {_code_or_unknown(inputs.base_model)}"
        + (f" (revision `{inputs.base_model_revision}`)" if inputs.base_model_revision else "")
        + (
            f", loaded as cpo's `{inputs.builtin}` (its GGUF, dequantised)"
            if inputs.builtin
            else ""
        )
        + (f", GGUF file `{inputs.gguf_file}`" if inputs.gguf_file else ""),
        f"- Datasets: {', '.join(f'`{d}`' for d in inputs.datasets) or 'not recorded'}",
        f"- License: {inputs.license or 'not known; see the base model card'}",
        f"- Weights: {'a LoRA adapter on the base model' if inputs.is_adapter else 'full model'}",
        "",
        "## Training hyperparameters",
        "",
    ]
    if inputs.hyperparameters or inputs.peft:
        lines += ["| field | value |", "|---|---|"]
        lines += [f"| `{k}` | `{v}` |" for k, v in inputs.hyperparameters.items()]
        lines += [f"| `peft.{k}` | `{v}` |" for k, v in inputs.peft.items()]
    else:
        lines.append("The resolved recipe was not found in the output folder.")
    if inputs.recipe_file:
        lines += ["", f"The full resolved recipe is `{inputs.recipe_file}` in this repository."]
    lines += ["", "## Final metrics", ""]
    shown = _card_metric_rows(inputs)
    if shown:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| `{k}` | {v:.4g} |" for k, v in shown]
        lines += ["", f"(from `{inputs.metrics_source}`)"]
    else:
        lines.append("No final metrics were found in the output folder.")
    lines += ["", "## How to use", "", *_usage(inputs), ""]
    return "\n".join(lines)


def _card_metric_rows(inputs: CardInputs) -> list[tuple[str, float]]:
    merged = {**inputs.train_metrics, **inputs.eval_metrics}
    rows = [(k, merged[k]) for k in _CARD_METRICS if k in merged]
    rows += [
        (k, v)
        for k, v in sorted(inputs.eval_metrics.items())
        if k not in _CARD_METRICS and "/" in k
    ]
    return rows


def _usage(inputs: CardInputs) -> list[str]:
    if inputs.is_adapter:
        code = [
            "from peft import AutoPeftModelForCausalLM",
            "from transformers import AutoTokenizer",
            "",
            f'model = AutoPeftModelForCausalLM.from_pretrained("{inputs.repo_id}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{inputs.repo_id}")',
        ]
    else:
        code = [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'model = AutoModelForCausalLM.from_pretrained("{inputs.repo_id}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{inputs.repo_id}")',
        ]
    return ["```python", *code, "```"]


def _code_or_unknown(value: str | None) -> str:
    return f"`{value}`" if value else "not recorded"


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
