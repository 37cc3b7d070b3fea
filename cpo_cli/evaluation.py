"""`cpo eval`: the training loop's own evaluation (`engine.evaluate.evaluate_model`, the same
forward pass, loss and metric names) run on any model and preference data, plus what a pipeline
needs around it: quality gates, a second model side by side, sample generations and reference
metrics. No second forward pass lives here; the numbers are the engine's."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cpo_cli.errors import DependencyMissingError, GateFailedError, UsageError, first_line
from cpo_cli.gen_metrics import GENERATION_METRICS, generation_metrics
from cpo_cli.judge import REWARD_METRICS
from cpo_cli.metric_names import EVAL_METRICS as ENGINE_EVAL_METRICS

if TYPE_CHECKING:
    from cpo_cli.engine.generate import Sample
    from cpo_cli.recipe.schema import DataSource, Recipe
    from cpo_cli.recipe.training import TrainingConfig

#: What `cpo eval` reports, in table order: the engine's metric names with the `eval_` prefix.
EVAL_METRICS: tuple[str, ...] = tuple(f"eval_{name}" for name in ENGINE_EVAL_METRICS)
#: The number of pairs scored, reported beside the metrics (and gateable, e.g. `=50`).
NUM_PAIRS = "eval_num_pairs"
REFERENCE_METRICS = ("eval_bleu", "eval_chrf")


# ----------------------------------------------------------------------------- gates


@dataclass(frozen=True)
class Gate:
    """`--fail-under METRIC=VALUE` (fails when the metric is below) or `--fail-over` (above)."""

    metric: str
    kind: Literal["under", "over"]
    threshold: float

    @property
    def flag(self) -> str:
        return f"--fail-{self.kind} {self.metric}={self.threshold:g}"

    def passes(self, value: float) -> bool:
        if math.isnan(value):
            return False  # a NaN metric never satisfies a gate
        return value >= self.threshold if self.kind == "under" else value <= self.threshold


def gateable_metrics(
    extra: Sequence[str] = (),
    *,
    generate: bool = False,
    reward_model: bool = False,
    compare: bool = False,
) -> list[str]:
    """The metrics this run of `cpo eval` will report, so a gate naming another fails at once."""
    names = [*EVAL_METRICS, NUM_PAIRS]
    if generate:
        names += GENERATION_METRICS
    if reward_model:
        names += [m for m in REWARD_METRICS if compare or not m.endswith("_vs_compare")]
    return [*names, *extra]


def normalise_metric_name(name: str, valid: Sequence[str]) -> str:
    """`rewards/accuracies` and `eval_rewards/accuracies` name the same metric; anything else
    fails with the list of valid names."""
    name = name.strip()
    for candidate in (name, f"eval_{name}"):
        if candidate in valid:
            return candidate
    raise UsageError(
        f"unknown metric {name!r} in a quality gate; valid metrics: {', '.join(valid)}"
    )


def parse_gates(
    fail_under: Sequence[str], fail_over: Sequence[str], *, valid: Sequence[str] | None = None
) -> list[Gate]:
    """Every `METRIC=VALUE` of `--fail-under` / `--fail-over`, checked before any model loads."""
    valid = list(valid or gateable_metrics())
    gates: list[Gate] = []
    for kind, specs in (("under", fail_under), ("over", fail_over)):
        for spec in specs:
            metric, sep, raw = spec.rpartition("=")
            if not sep or not metric:
                raise UsageError(
                    f"--fail-{kind} {spec!r}: expected METRIC=VALUE, "
                    f"e.g. --fail-{kind} eval_rewards/accuracies=0.6"
                )
            try:
                threshold = float(raw)
            except ValueError:
                raise UsageError(f"--fail-{kind} {spec!r}: {raw!r} is not a number") from None
            gates.append(Gate(normalise_metric_name(metric, valid), kind, threshold))  # type: ignore[arg-type]
    return gates


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    value: float | None

    @property
    def passed(self) -> bool:
        return self.value is not None and self.gate.passes(self.value)

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.gate.metric,
            "kind": f"fail_{self.gate.kind}",
            "threshold": self.gate.threshold,
            "value": _json_number(self.value),
            "passed": self.passed,
        }


def check_gates(metrics: Mapping[str, float], gates: Sequence[Gate]) -> list[GateResult]:
    return [GateResult(g, metrics.get(g.metric)) for g in gates]


def raise_on_failed_gates(results: Sequence[GateResult]) -> None:
    """One `GateFailedError` (exit code 3) naming every failed metric, its value and threshold."""
    failed = [r for r in results if not r.passed]
    if not failed:
        return
    parts = []
    for r in failed:
        relation = "below" if r.gate.kind == "under" else "above"
        value = "missing" if r.value is None else f"{r.value:.6g}"
        parts.append(f"{r.gate.metric} = {value} is {relation} the threshold {r.gate.threshold:g}")
    raise GateFailedError("quality gate failed: " + "; ".join(parts))


# ----------------------------------------------------------------------------- comparison


def difference(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
    """`a - b` for every metric both report (the model minus the compared one)."""
    return {k: a[k] - b[k] for k in a if k in b}


def ordered_metric_names(*metric_sets: Mapping[str, float]) -> list[str]:
    names = [*EVAL_METRICS, NUM_PAIRS, *GENERATION_METRICS, *REWARD_METRICS, *REFERENCE_METRICS]
    present = set().union(*(m.keys() for m in metric_sets))
    return [n for n in names if n in present] + sorted(present - set(names))


# ----------------------------------------------------------------------------- generations


@dataclass(frozen=True)
class GenerationSettings:
    num_prompts: int
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 42

    def validate(self) -> None:
        if self.num_prompts < 1:
            raise UsageError("--generate must be at least 1")
        if self.max_new_tokens < 1:
            raise UsageError("--max-new-tokens must be at least 1")
        if self.temperature < 0:
            raise UsageError("--temperature must be 0 (greedy) or positive")
        if not 0 < self.top_p <= 1:
            raise UsageError("--top-p must be in (0, 1]")


def sample_rows(num_rows: int, n: int, seed: int) -> list[int]:
    """`n` row indices drawn without replacement, in dataset order (stable for a seed)."""
    if n >= num_rows:
        return list(range(num_rows))
    return sorted(random.Random(seed).sample(range(num_rows), n))


def generate(
    subject: EvalModel,
    pairs: Any,
    settings: GenerationSettings,
    *,
    batch_size: int,
    on_progress: Any = None,
) -> list[Sample]:
    """Answers of the model to `settings.num_prompts` prompts of the prepared pairs (the same
    prompts for every model at one seed), beside the chosen and rejected answers. Greedy
    unless a temperature is set; batched and shared out across processes."""
    import torch

    from cpo_cli.engine.generate import generate_answers, to_samples

    rows = pairs.select(sample_rows(len(pairs), settings.num_prompts, settings.seed))
    sampling = settings.temperature > 0
    options: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens, "do_sample": sampling}
    if sampling:
        options.update(temperature=settings.temperature, top_p=settings.top_p, top_k=0)
        torch.manual_seed(settings.seed)
    else:  # make greedy explicit so a model's generation_config cannot turn sampling on
        options.update(temperature=None, top_p=None, top_k=None)
    generations = generate_answers(
        subject.model,
        subject.tokenizer,
        rows,
        is_encoder_decoder=subject.is_encoder_decoder,
        batch_size=batch_size,
        on_progress=on_progress,
        **options,
    )
    return to_samples(list(rows), generations, subject.tokenizer, subject.model)


def sample_metrics(samples: Sequence[Sample]) -> dict[str, float]:
    """The task metrics of `cpo_cli.gen_metrics` over these samples."""
    return generation_metrics([s.answer() for s in samples])


def sample_records(
    samples: Sequence[Sample],
    compared: Sequence[Sample] | None = None,
    rewards: Mapping[str, Sequence[float]] | None = None,
) -> list[dict[str, Any]]:
    """One JSON object per prompt for `--generations-out`: the sample, the compared model's
    answer (`compare_*` fields) and the judge's rewards when there are any."""
    records = []
    for i, sample in enumerate(samples):
        record = sample.record()
        if compared is not None:
            theirs = compared[i].record()
            record.update(
                {
                    f"compare_{k}": theirs[k]
                    for k in ("generation", "tokens", "finished", "answer_correct")
                }
            )
        for name, values in (rewards or {}).items():
            record[name] = values[i]
        records.append(record)
    return records


def write_generations(records: Sequence[Mapping[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(dict(record), ensure_ascii=False) + "\n")


def require_sacrebleu() -> Any:
    """The sacrebleu module, or a clear error saying how to install it."""
    try:
        import sacrebleu
    except ImportError:
        raise DependencyMissingError(
            "--reference-metrics needs the sacrebleu package, which is not installed",
            hint="pip install sacrebleu (or pip install 'cpo-cli[metrics]')",
        ) from None
    return sacrebleu


def reference_metrics(samples: Sequence[Sample]) -> dict[str, float]:
    """Corpus BLEU and chrF of the generations against the chosen answers (as references),
    from sacrebleu: meaningful where chosen answers are references, e.g. translations."""
    sacrebleu = require_sacrebleu()
    if not samples:
        return {}
    hypotheses = [s.generation for s in samples]
    references = [[s.chosen for s in samples]]
    return {
        "eval_bleu": float(sacrebleu.corpus_bleu(hypotheses, references).score),
        "eval_chrf": float(sacrebleu.corpus_chrf(hypotheses, references).score),
    }


# ----------------------------------------------------------------------------- output


def _json_number(value: float | None) -> float | str | None:
    if value is None:
        return None
    return value if math.isfinite(value) else str(value)


def report_json(
    *,
    model: str,
    dataset: str,
    metrics: Mapping[str, float],
    split: str | None = None,
    compare: tuple[str, Mapping[str, float]] | None = None,
    gates: Sequence[GateResult] = (),
    generations_path: Path | None = None,
) -> dict[str, Any]:
    """The one JSON object of `--json`: metrics under their engine names, plus what was run
    (`cpo push` reads it for the model card's model-index: model, dataset, split, metrics)."""
    report: dict[str, Any] = {
        "model": model,
        "dataset": dataset,
        "split": split,
        "num_pairs": int(metrics.get(NUM_PAIRS, 0)),
        "metrics": {k: _json_number(v) for k, v in metrics.items()},
    }
    if compare is not None:
        label, other = compare
        report["compare"] = {
            "model": label,
            "metrics": {k: _json_number(v) for k, v in other.items()},
            "difference": {k: _json_number(v) for k, v in difference(metrics, other).items()},
        }
    if gates:
        report["gates"] = [g.to_json() for g in gates]
    if generations_path is not None:
        report["generations"] = str(generations_path)
    return report


# ----------------------------------------------------------------------------- models and data


@dataclass
class EvalModel:
    """A model ready to score pairs: what `--model` / `--compare` named, loaded as training
    loads it (`engine.model.build_model`), LoRA adapters applied when the folder holds some."""

    label: str
    model: Any
    tokenizer: Any
    is_encoder_decoder: bool


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file()


def load_eval_model(recipe: Recipe, model_ref: str | None) -> EvalModel:
    """The recipe's model (`model_ref` None), a trained output folder (full weights or LoRA
    adapters on the recipe's base model), or any other `model.name_or_path` value."""
    from transformers.utils import logging as hf_logging

    from cpo_cli.engine.model import build_model, build_tokenizer, is_encoder_decoder_model

    hf_logging.disable_progress_bar()  # our own progress is the one bar on screen
    training = recipe.training
    if model_ref is None:
        section = recipe.model
        encoder_decoder = is_encoder_decoder_model(section, training)
        model = build_model(section, training, None)
        return EvalModel(section.name_or_path, model, build_tokenizer(section), encoder_decoder)

    folder = Path(model_ref).expanduser()
    if (folder / "adapter_config.json").is_file():
        return _load_adapter_model(recipe, folder)
    plain = {"name_or_path": model_ref, "gguf_file": None, "revision": None}
    if folder.is_dir():
        plain["name_or_path"] = str(folder)
        if not (folder / "config.json").is_file():
            raise UsageError(
                f"{model_ref}: neither config.json nor adapter_config.json found — not a model "
                "folder (give the output_dir of a finished `cpo train` run)"
            )
    section = recipe.model.model_copy(update={**plain, "tokenizer_name_or_path": None})
    if folder.is_dir() and not _has_tokenizer(folder):
        tokenizer = build_tokenizer(recipe.model)  # weights-only folder: the recipe's tokenizer
    else:
        tokenizer = build_tokenizer(section)
    encoder_decoder = is_encoder_decoder_model(section, training)
    return EvalModel(model_ref, build_model(section, training, None), tokenizer, encoder_decoder)


def _load_adapter_model(recipe: Recipe, folder: Path) -> EvalModel:
    from cpo_cli.engine.model import build_model, build_tokenizer, is_encoder_decoder_model

    try:
        from peft import PeftModel
    except ImportError:
        raise DependencyMissingError(
            f"{folder} holds LoRA adapters but the peft package is not installed",
            hint="pip install peft (or pip install 'cpo-cli[peft]')",
        ) from None
    training = recipe.training
    encoder_decoder = is_encoder_decoder_model(recipe.model, training)
    base = build_model(recipe.model, training, None)
    try:
        model = PeftModel.from_pretrained(base, str(folder))
    except Exception as exc:  # wrong base shapes, unreadable files...
        raise UsageError(
            f"cannot apply the LoRA adapters of {folder} to {recipe.model.name_or_path!r}: "
            f"{first_line(exc)}",
            hint="evaluate adapters with the recipe that trained them (its model section)",
        ) from exc
    if _has_tokenizer(folder):
        section = recipe.model.model_copy(
            update={
                "name_or_path": str(folder),
                "gguf_file": None,
                "revision": None,
                "tokenizer_name_or_path": None,
            }
        )
        tokenizer = build_tokenizer(section)
    else:
        tokenizer = build_tokenizer(recipe.model)
    return EvalModel(str(folder), model, tokenizer, encoder_decoder)


def check_same_tokenizer(a: EvalModel, b: EvalModel) -> None:
    """`--compare` scores the same token ids with both models: their vocabularies must agree."""
    if a.tokenizer.get_vocab() != b.tokenizer.get_vocab():
        raise UsageError(
            f"--compare {b.label}: its tokenizer differs from that of {a.label}, so the same "
            "prepared pairs would mean different text to it",
            hint="compare models that share a tokenizer (e.g. a trained model and its base)",
        )


def prepare_pairs(
    source: DataSource | list[DataSource],
    tokenizer: Any,
    training: TrainingConfig,
    *,
    is_encoder_decoder: bool,
) -> Any:
    """The eval pairs exactly as training prepares them (same template, tokenisation,
    truncation, checks and cache; a `cpo prepare` folder is checked and reused)."""
    from cpo_cli.engine.data import prepare_source

    return prepare_source(
        "eval", source, tokenizer, training, is_encoder_decoder=is_encoder_decoder
    )


def score_pairs(subject: EvalModel, pairs: Any, training: TrainingConfig) -> dict[str, float]:
    """The engine's evaluation over every pair, set up as the training loop sets it up (same
    accelerator, batch layout, loader and `evaluate_model`), plus the number of pairs."""
    from cpo_cli.engine.data import build_eval_dataloader, loader_settings
    from cpo_cli.engine.distributed import build_accelerator
    from cpo_cli.engine.evaluate import evaluate_model

    accelerator, _, _ = build_accelerator(training)
    model = subject.model
    loader = build_eval_dataloader(
        pairs,
        training,
        **loader_settings(
            model, subject.tokenizer, training, is_encoder_decoder=subject.is_encoder_decoder
        ),
        process_index=accelerator.process_index,
        num_processes=accelerator.num_processes,
    )
    prepared = accelerator.prepare_model(model, evaluation_mode=True)
    metrics = evaluate_model(prepared, loader, training, accelerator)
    subject.model = accelerator.unwrap_model(prepared)
    return {**metrics, NUM_PAIRS: float(len(pairs))}


# ----------------------------------------------------------------------------- reward judge


@dataclass
class Judgement:
    """The judge's rewards per prompt and the metrics they give each model."""

    rewards: dict[str, list[float]]
    metrics: dict[str, float]
    compare_metrics: dict[str, float] | None


def judge_samples(
    judge: Any,
    samples: Sequence[Sample],
    compared: Sequence[Sample] | None,
    *,
    batch_size: int,
    on_progress: Any = None,
) -> Judgement:
    """Rewards of the generations, of the chosen answers and of the compared model's
    generations (same prompts), and from them `judge.REWARD_METRICS` for each model (the
    compared model's win rate against the model evaluated is 1 minus the reverse: left out)."""
    from cpo_cli.judge import reward_metrics, score

    prompts = [s.prompt for s in samples]

    def rewards_of(answers: list[str]) -> list[float]:
        return score(judge, prompts, answers, batch_size=batch_size, on_progress=on_progress)

    rewards = {
        "reward": rewards_of([s.generation for s in samples]),
        "chosen_reward": rewards_of([s.chosen for s in samples]),
    }
    other = None
    if compared is not None:
        rewards["compare_reward"] = rewards_of([s.generation for s in compared])
        other = reward_metrics(rewards["compare_reward"], rewards["chosen_reward"])
    metrics = reward_metrics(
        rewards["reward"], rewards["chosen_reward"], rewards.get("compare_reward")
    )
    return Judgement(rewards, metrics, other)
