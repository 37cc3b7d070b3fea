"""What a finished `cpo train` output folder holds, read for publishing: the resolved recipe,
the final training metrics, the evaluation of its weights and the base model's license. Pure
reading, no network; everything is optional and a missing part is reported as unknown.

Where the evaluation of the weights comes from, first found wins:
1. `cpo push --eval-json PATH`: a `cpo eval --json` report of this folder;
2. `eval_results.json` in the output folder (`cpo eval R.yaml --model OUT --json
   OUT/eval_results.json`);
3. the training run's own evaluation of the weights it saved: the `metrics.jsonl` evaluation
   at the final step (or at the best checkpoint's step with `load_best_model_at_end`).
A report of another model is refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cpo_cli.errors import HubError, UsageError, first_line
from cpo_cli.public_paths import is_hub_id, public_name

#: Where the engine may leave the resolved recipe, in the order we look.
RECIPE_FILE_NAMES = ("recipe.yaml", "resolved_recipe.yaml", "cpo_recipe.yaml", "recipe.yml")
#: Final training metrics summaries, in the order we look: the engine's `train_results.json`
#: ({"global_step", ..., "metrics": {...}}), then other common names.
METRICS_FILE_NAMES = (
    "train_results.json",
    "final_metrics.json",
    "all_results.json",
    "metrics.json",
)
#: The per-log-step stream the engine always writes; the last records are a fallback.
METRICS_STREAM_NAME = "metrics.jsonl"
#: A `cpo eval --json` report of the folder, read for the model-index.
EVAL_RESULTS_FILE = "eval_results.json"


@dataclass
class EvalSource:
    """Final evaluation metrics of the published weights, and what they were measured on."""

    metrics: dict[str, float]
    origin: str
    dataset: str | None = None
    split: str | None = None
    num_pairs: int | None = None


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
    merged: dict[str, float] = {}
    for record in _stream(output_dir):
        merged.update(_numeric_items(record))  # later records win: the final values
    return (merged, METRICS_STREAM_NAME) if merged else ({}, None)


def _stream(output_dir: Path) -> list[dict[str, Any]]:
    path = output_dir / METRICS_STREAM_NAME
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


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


def read_eval_report(path: Path, output_dir: Path, *, flag: str | None = None) -> EvalSource:
    """A `cpo eval --json` report of this output folder (`flag`: the option that named it)."""
    where = f"{flag} {path}" if flag else str(path)
    error = UsageError if flag else HubError
    hint = f"write it with `cpo eval RECIPE --model {output_dir} --json {path}`"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise error(f"{where}: cannot read the evaluation report: {first_line(exc)}") from None
    metrics = data.get("metrics") if isinstance(data, dict) else None
    numbers = {
        str(k): float(v)
        for k, v in (metrics.items() if isinstance(metrics, Mapping) else ())
        if isinstance(v, (int, float)) and not isinstance(v, bool) and str(k).startswith("eval_")
    }
    if not numbers:
        raise error(f"{where}: no eval_ metrics in it (not a `cpo eval --json` report)", hint=hint)
    model = data.get("model")
    if not _names_folder(model, output_dir):
        raise error(
            f"{where} holds results for {public_name(str(model))!r}, not for {output_dir.name}",
            hint=hint,
        )
    pairs = data.get("num_pairs")
    return EvalSource(
        metrics=numbers,
        origin=f"`cpo eval` ({Path(path).name})",
        dataset=str(data["dataset"]) if data.get("dataset") else None,
        split=str(data["split"]) if data.get("split") else None,
        num_pairs=int(pairs) if isinstance(pairs, int) and pairs > 0 else None,
    )


def _names_folder(label: Any, output_dir: Path) -> bool:
    """Whether a report's `model` is this folder (resolved here; by name when the report was
    written from another working folder or machine)."""
    if not isinstance(label, str) or not label:
        return False
    named = Path(label).expanduser()
    if named.exists():
        return named.resolve() == Path(output_dir).resolve()
    return named.name == Path(output_dir).resolve().name


def training_evaluation(output_dir: Path, recipe: Mapping[str, Any]) -> EvalSource | None:
    """The run's own evaluation of the weights it saved: the `metrics.jsonl` evaluation at the
    final step, or at the best checkpoint's step when that model was loaded at the end."""
    try:
        summary = json.loads((output_dir / "train_results.json").read_text(encoding="utf-8"))
        step = int(summary["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    best = summary.get("best_checkpoint")
    if isinstance(best, str) and best:
        try:
            step = int(Path(best).name.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            return None
    found: dict[str, float] = {}
    for record in _stream(output_dir):
        if record.get("step") == step and any(str(k).startswith("eval_") for k in record):
            found.update((k, v) for k, v in _numeric_items(record).items() if k.startswith("eval_"))
    if not found:
        return None
    source = section(section(recipe, "data"), "eval")
    return EvalSource(
        metrics=found,
        origin=f"the training run's evaluation at step {step}",
        dataset=str(source["path"]) if source.get("path") else None,
        split=str(source["split"]) if source.get("split") else None,
    )


def read_base_license(model_section: Mapping[str, Any]) -> str | None:
    """The base model's license where it is known offline: the `license:` of a local model
    folder's card, of a Hub card already in the local cache, or the `general.license` of a GGUF
    file. Never a network call."""
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
        found = _license_from_card(local / "README.md")
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
        if isinstance(cached, str):
            return _license_from_card(Path(cached))
    return None


def _license_from_card(path: Path) -> str | None:
    """`license` of a model card, parsed by huggingface_hub."""
    if not path.is_file():
        return None
    from huggingface_hub import ModelCard

    try:
        card = ModelCard(path.read_text(encoding="utf-8"), ignore_metadata_errors=True)
    except (OSError, ValueError, yaml.YAMLError):
        return None
    value = card.data.to_dict().get("license")
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


def section(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    return value if isinstance(value, Mapping) else {}


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
