"""The model card (README.md) for `cpo push`, built with huggingface_hub's `ModelCard`,
`ModelCardData` and `EvalResult` from what a training run left in its output folder
(`cpo_cli.output_folder`): the resolved recipe, the final metrics, the evaluation of the
weights, the PEFT adapter config and the merge check. No network: `--dry-run` shows exactly
the card that would be uploaded.

The metadata is the library's: `base_model` (Hub ids only), `datasets` (Hub ids only),
`license`, `tags`, `library_name`, and a `model-index` holding the final evaluation as
`EvalResult`s with the dataset named. The body keeps what a reader needs: base model and data,
the resolved objective, the evaluation and merge check, hyperparameters, how to reproduce and
how to use. Local paths appear as `name (local)` (`cpo_cli.public_paths`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cpo_cli.errors import HubError, first_line
from cpo_cli.metric_names import EVAL_METRICS as ENGINE_EVAL_METRICS
from cpo_cli.output_folder import (
    EVAL_RESULTS_FILE,
    EvalSource,
    find_recipe_file,
    read_base_license,
    read_eval_report,
    read_final_metrics,
    read_recipe_dict,
    section,
    training_evaluation,
)
from cpo_cli.public_paths import is_hub_id, local_label, public_name
from cpo_cli.recipe.choices import BUILTIN_MODELS, BUILTIN_PREFIX

if TYPE_CHECKING:
    from huggingface_hub import EvalResult, ModelCard

    from cpo_cli.merge_report import MergeCheck

TASK_TYPE = "text-generation"
TASK_NAME = "Preference pairs (held out)"

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
#: Training metric keys shown in the card's table (when present), in this order.
_TRAIN_METRICS = ("train_loss", "loss", "rewards/accuracies", "rewards/margins", "nll_loss")
#: Evaluation metrics of the model-index: the engine's (but the raw-logit means, which say
#: nothing about quality), then generation metrics, then anything else `cpo eval` reported.
_INDEX_METRICS = tuple(f"eval_{m}" for m in ENGINE_EVAL_METRICS if not m.startswith("logits/"))
_NOT_INDEXED = ("eval_num_pairs", "eval_logits/chosen", "eval_logits/rejected")


@dataclass
class CardInputs:
    """What the card says; every field may be unknown (None / empty). Paths are kept as
    recorded here and made public when rendered."""

    repo_id: str
    base_model: str | None = None
    base_model_revision: str | None = None
    gguf_file: str | None = None
    train_data: str | None = None
    train_split: str | None = None
    eval_data: str | None = None
    eval_split: str | None = None
    loss_type: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    peft: dict[str, Any] = field(default_factory=dict)
    is_adapter: bool = False
    #: a LoRA adapter merged into the base (by the run or by `cpo push --merge`)
    merge_check: MergeCheck | None = None
    train_metrics: dict[str, float] = field(default_factory=dict)
    metrics_source: str | None = None
    evaluation: EvalSource | None = None
    license: str | None = None
    recipe_file: str | None = None
    #: the cpo builtin name the base model was given as, e.g. builtin:smollm2-135m-instruct
    builtin: str | None = None

    @property
    def hub_datasets(self) -> list[str]:
        names = [d for d in (self.train_data, self.eval_data) if d and is_hub_id(d)]
        return list(dict.fromkeys(names))


# ----------------------------------------------------------------------------- reading


def collect_card_inputs(
    output_dir: Path,
    repo_id: str,
    *,
    evaluation: EvalSource | None = None,
    merge_check: MergeCheck | None = None,
) -> CardInputs:
    """Everything the card needs, read from a trained output folder. `evaluation` (from
    `--eval-json`) wins over the folder's own; `merge_check`: `cpo push --merge` merged it."""
    from cpo_cli.merge_report import read_report

    recipe_path = find_recipe_file(output_dir)
    recipe = read_recipe_dict(recipe_path)
    model = section(recipe, "model")
    training = section(recipe, "training")
    data = section(recipe, "data")
    peft = section(recipe, "peft")

    inputs = CardInputs(repo_id=repo_id, recipe_file=recipe_path.name if recipe_path else None)
    adapter_config = output_dir / "adapter_config.json"
    if adapter_config.is_file() and merge_check is None:
        inputs.is_adapter = True
        try:
            adapter = json.loads(adapter_config.read_text(encoding="utf-8"))
            inputs.base_model = adapter.get("base_model_name_or_path") or None
        except ValueError:
            pass
    name = model.get("name_or_path") or inputs.base_model
    if name:
        inputs.base_model = BUILTIN_HUB_IDS.get(str(name), str(name))
        if inputs.base_model != name:
            inputs.builtin = str(name)
    inputs.base_model_revision = model.get("revision") or None
    inputs.gguf_file = model.get("gguf_file") or None
    inputs.license = read_base_license(model)
    train_source, eval_source = section(data, "train"), section(data, "eval")
    inputs.train_data = train_source.get("path") or None
    inputs.train_split = train_source.get("split") or None
    inputs.eval_data = eval_source.get("path") or None
    inputs.eval_split = eval_source.get("split") or None
    inputs.loss_type = training.get("loss_type") or None
    inputs.training = dict(training)
    inputs.hyperparameters = shown_hyperparameters(training)
    inputs.peft = {k: peft[k] for k in _PEFT_FIELDS if peft.get(k) is not None}
    if merge_check is not None:
        inputs.merge_check = merge_check
    elif not inputs.is_adapter and peft:
        inputs.merge_check = read_report(output_dir)  # merged by the run (merge_at_end)
    metrics, source = read_final_metrics(output_dir)
    inputs.metrics_source = source
    inputs.train_metrics = {k: v for k, v in metrics.items() if not k.startswith("eval_")}
    if evaluation is None and (output_dir / EVAL_RESULTS_FILE).is_file():
        evaluation = read_eval_report(output_dir / EVAL_RESULTS_FILE, output_dir)
    inputs.evaluation = evaluation or training_evaluation(output_dir, recipe)
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


# ----------------------------------------------------------------------------- the card


def card_tags(inputs: CardInputs) -> list[str]:
    tags = ["cpo", "preference-optimization"]
    if inputs.loss_type:
        tags.append(inputs.loss_type)
    if inputs.is_adapter or inputs.merge_check is not None:
        tags.append("lora")
    if inputs.is_adapter:
        tags.append("peft")
    return tags


def eval_results(inputs: CardInputs) -> list[EvalResult]:
    """The model-index entries: one `EvalResult` per final evaluation metric."""
    from huggingface_hub import EvalResult

    evaluation = inputs.evaluation
    if evaluation is None:
        return []
    dataset = evaluation.dataset
    if dataset and is_hub_id(dataset):
        dataset_type, dataset_name = dataset, dataset
    elif dataset:
        dataset_type = local_label(dataset).removesuffix(" (local)")
        dataset_name = str(public_name(dataset))
    else:
        dataset_type = dataset_name = "not recorded"
    results = []
    for key in _indexed_metric_names(evaluation.metrics):
        value = evaluation.metrics[key]
        if not math.isfinite(value):
            continue
        results.append(
            EvalResult(
                task_type=TASK_TYPE,
                task_name=TASK_NAME,
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                dataset_split=evaluation.split if dataset and is_hub_id(dataset) else None,
                metric_type=key.removeprefix("eval_"),
                metric_name=key,
                metric_value=float(f"{value:.6g}"),
            )
        )
    return results


def _indexed_metric_names(metrics: Mapping[str, float]) -> list[str]:
    known = [k for k in _INDEX_METRICS if k in metrics]
    rest = sorted(k for k in metrics if k not in known and k not in _NOT_INDEXED)
    return known + rest


def build_model_card(inputs: CardInputs, *, cpo_version: str) -> ModelCard:
    """The card: `ModelCardData` metadata (model-index included) and our markdown body, parsed
    back by huggingface_hub so that a card the Hub could not read is never uploaded."""
    from huggingface_hub import ModelCard, ModelCardData

    title = inputs.repo_id.split("/")[-1]
    results = eval_results(inputs)
    data = ModelCardData(
        base_model=inputs.base_model if is_hub_id(inputs.base_model) else None,
        datasets=inputs.hub_datasets or None,
        license=inputs.license,
        library_name="peft" if inputs.is_adapter else "transformers",
        pipeline_tag="text-generation",
        tags=card_tags(inputs),
        model_name=title if results else None,
        eval_results=results or None,
    )
    content = f"---\n{data.to_yaml()}\n---\n\n{_body(inputs, title, cpo_version)}"
    try:
        return ModelCard(content)
    except (ValueError, yaml.YAMLError) as exc:  # our bug, but never one to publish
        raise HubError(f"the generated model card does not parse: {first_line(exc)}") from exc


def render_model_card(inputs: CardInputs, *, cpo_version: str) -> str:
    """The README.md text."""
    return str(build_model_card(inputs, cpo_version=cpo_version))


def _body(inputs: CardInputs, title: str, cpo_version: str) -> str:
    loss = f"`{inputs.loss_type}`" if inputs.loss_type else "an unrecorded"
    lines = [
        f"# {title}",
        "",
        f"Preference-tuned with cpo {cpo_version}, a command-line tool for Contrastive "
        f"Preference Optimization and its variants, using the {loss} objective.",
        "",
        "## Model and data",
        "",
        f"- Base model: {_base_model_line(inputs)}",
        f"- Weights: {_weights_line(inputs)}",
        f"- Training data: {_dataset_line(inputs.train_data, inputs.train_split)}",
        f"- Evaluation data: {_dataset_line(inputs.eval_data, inputs.eval_split)}",
        f"- License: {inputs.license or 'not known; see the base model card'}",
        "",
        "## Objective",
        "",
        *_objective(inputs),
        "",
        "## Evaluation",
        "",
        *_evaluation(inputs),
    ]
    if inputs.merge_check is not None:
        lines += ["", "## LoRA merge check", "", *_mergesection(inputs.merge_check)]
    lines += ["", "## Training hyperparameters", ""]
    if inputs.hyperparameters or inputs.peft:
        lines += ["| field | value |", "|---|---|"]
        lines += [f"| `{k}` | `{v}` |" for k, v in inputs.hyperparameters.items()]
        lines += [f"| `peft.{k}` | `{v}` |" for k, v in inputs.peft.items()]
    else:
        lines.append("The resolved recipe was not found in the output folder.")
    shown = [(k, inputs.train_metrics[k]) for k in _TRAIN_METRICS if k in inputs.train_metrics]
    if shown:
        lines += ["", f"Last logged training metrics (from `{inputs.metrics_source}`):", ""]
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| `{k}` | {v:.4g} |" for k, v in shown]
    lines += ["", "## How to reproduce", "", *_reproduce(inputs)]
    lines += ["", "## How to use", "", *_usage(inputs), ""]
    return "\n".join(lines)


def _base_model_line(inputs: CardInputs) -> str:
    if not inputs.base_model:
        return "not recorded"
    text = _link(inputs.base_model, "")
    if inputs.base_model_revision:
        text += f" (revision `{inputs.base_model_revision}`)"
    if inputs.builtin:
        text += f", loaded as cpo's `{inputs.builtin}` (its GGUF file, dequantised)"
    if inputs.gguf_file:
        text += f", GGUF file `{Path(inputs.gguf_file).name}`"
    return text


def _weights_line(inputs: CardInputs) -> str:
    if inputs.is_adapter:
        return "a LoRA adapter on the base model"
    if inputs.merge_check is not None:
        return "a LoRA adapter merged into the base model (checked: see below)"
    if inputs.peft:
        return "a LoRA adapter merged into the base model (no merge check recorded)"
    return "the full model"


def _dataset_line(path: str | None, split: str | None) -> str:
    if not path:
        return "not recorded"
    text = _link(path, "datasets/")
    return text + (f" (split `{split}`)" if split and is_hub_id(path) else "")


def _link(name: str, kind: str) -> str:
    """A Hub id as a link to its page; a local path as `name (local)`."""
    if is_hub_id(name):
        return f"[{name}](https://huggingface.co/{kind}{name})"
    return f"`{public_name(name)}`"


def _objective(inputs: CardInputs) -> list[str]:
    """The loss as resolved: the registry's description, the values it uses, the NLL term."""
    from cpo_cli.losses.registry import LOSSES

    spec = LOSSES.get(str(inputs.loss_type))
    if spec is None:
        return ["The resolved recipe was not found, so the objective is not recorded."]
    t = inputs.training
    knobs = {"beta": t.get("beta"), **{k: t.get(k) for k in spec.knobs}}
    if t.get("alpha") or spec.name == "alphapo":
        knobs["alpha"] = t.get("alpha")
    values = ", ".join(f"`{k}` = {v}" for k, v in knobs.items() if v is not None)
    logps = "length-averaged" if spec.averages_logps else "summed"
    lines = [
        f"`{spec.name}`: {spec.summary} ([paper]({spec.paper})), with {values}; the margin is "
        f"taken on {logps} answer log-probabilities."
    ]
    cpo_alpha = 0.0 if spec.name == "alphapo" else float(t.get("cpo_alpha") or 0.0)
    if cpo_alpha:
        lines += [
            "",
            f"Plus `cpo_alpha` = {cpo_alpha:g} times the negative log-likelihood of the chosen "
            "answers (CPO's behaviour-cloning term, "
            "[Xu et al. 2024](https://arxiv.org/abs/2401.08417)).",
        ]
    return lines


def _evaluation(inputs: CardInputs) -> list[str]:
    evaluation = inputs.evaluation
    if evaluation is None:
        return [
            "No evaluation of these weights was found. To add one (it becomes the model-index "
            "of this card), run `cpo eval RECIPE --model OUTPUT_DIR --json "
            "OUTPUT_DIR/eval_results.json` before `cpo push`."
        ]
    on = _dataset_line(evaluation.dataset, evaluation.split)
    pairs = f", {evaluation.num_pairs} pairs" if evaluation.num_pairs else ""
    lines = [f"From {evaluation.origin} on {on}{pairs}; also in this card's model-index.", ""]
    lines += ["| metric | value |", "|---|---|"]
    names = _indexed_metric_names(evaluation.metrics)
    lines += [f"| `{k}` | {evaluation.metrics[k]:.4g} |" for k in names]
    return lines


def _mergesection(check: MergeCheck) -> list[str]:
    verdict = "passed" if check.passed else "FAILED"
    return [
        f"The LoRA adapter was merged into the base weights, and the merge {verdict} cpo's "
        "check before saving: the answer log-probabilities of held-out pairs computed with "
        "the adapter model and with the merged model (in the dtype saved here), and adapter "
        "weight names checked for double wrapping.",
        "",
        f"Result: {check.summary()}.",
    ]


def _reproduce(inputs: CardInputs) -> list[str]:
    if not inputs.recipe_file:
        return ["The resolved recipe was not found in the output folder."]
    command = f"cpo train {inputs.recipe_file}"
    local = [
        (key, value)
        for key, value in (
            ("model.name_or_path", inputs.builtin or inputs.base_model),
            ("data.train.path", inputs.train_data),
            ("data.eval.path", inputs.eval_data),
        )
        if value and not is_hub_id(value) and not value.startswith(BUILTIN_PREFIX)
    ]
    overrides = [f"{key}=YOUR_COPY_OF_{Path(str(value)).name}" for key, value in local]
    overrides.append("training.output_dir=OUTPUT_DIR")
    return [
        f"The resolved recipe is `{inputs.recipe_file}` in this repository, with secrets "
        "removed and values marked `(local)` standing for files of the training machine. "
        "With cpo installed (see its README), point those at your own copies and train:",
        "",
        "```bash",
        " \\\n    ".join([command, *overrides]),
        "```",
    ]


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
