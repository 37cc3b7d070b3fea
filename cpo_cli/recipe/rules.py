"""Cross-field rules checked when a recipe loads, so a mistake shows up in `cpo recipe validate`
and not after the model has been downloaded. Each rule returns error and warning lines that name
every field involved by its dotted path."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from cpo_cli.losses.registry import LOSSES
from cpo_cli.metric_names import EVAL_METRICS
from cpo_cli.recipe.choices import ENGINE_OPTIMIZERS, ENGINE_TRACKERS, unknown_builtin
from cpo_cli.recipe.schema import Recipe
from cpo_cli.recipe.training import TrainingConfig

Problems = tuple[list[str], list[str]]
Rule = Callable[[Recipe, list[str], list[str]], None]


def _default(name: str) -> object:
    return TrainingConfig.model_fields[name].get_default(call_default_factory=True)


def _lengths(r: Recipe, errors: list[str], warnings: list[str]) -> None:
    t = r.training
    too_long = t.max_length is not None and t.max_prompt_length is not None
    if too_long and t.max_prompt_length >= t.max_length:  # type: ignore[operator]
        errors.append(
            f"training.max_prompt_length ({t.max_prompt_length}) must be below "
            f"training.max_length ({t.max_length}), or no answer token fits; lower "
            "max_prompt_length or raise max_length"
        )
    if t.is_encoder_decoder and t.max_completion_length is None:
        warnings.append(
            "training.is_encoder_decoder is true but training.max_completion_length is not set: "
            "answers of encoder-decoder models will not be truncated"
        )


def _loss_knobs(r: Recipe, errors: list[str], warnings: list[str]) -> None:
    t = r.training
    spec = LOSSES[t.loss_type]
    all_knobs = sorted({k for s in LOSSES.values() for k in s.knobs})
    for knob in all_knobs:
        value = getattr(t, knob)
        if knob in spec.knobs or value == _default(knob):
            continue
        readers = ", ".join(s.name for s in LOSSES.values() if knob in s.knobs)
        warnings.append(
            f"training.{knob} is set ({value}) but training.loss_type {t.loss_type!r} ignores "
            f"it; it is read by: {readers}"
        )
    if t.loss_type == "simpo" and "cpo_alpha" not in t.model_fields_set and t.cpo_alpha > 0:
        warnings.append(
            f"training.loss_type 'simpo' with the default training.cpo_alpha {t.cpo_alpha} is "
            "CPO-SimPO (it adds the NLL term on chosen answers), not SimPO; set "
            "training.cpo_alpha: 0 for pure SimPO, or set cpo_alpha explicitly to silence this"
        )
    if t.loss_type == "alphapo" and t.alpha == 0:
        warnings.append(
            "training.loss_type 'alphapo' with training.alpha 0 is plain SimPO; set "
            "training.alpha (e.g. 0.25) for the AlphaPO reward"
        )
    if t.loss_type == "alphapo" and "cpo_alpha" in t.model_fields_set and t.cpo_alpha != 0:
        warnings.append(
            f"training.cpo_alpha {t.cpo_alpha} is ignored with training.loss_type 'alphapo' "
            "(AlphaPO has no NLL term, as in TRL); use loss_type 'simpo' with training.alpha "
            "for AlphaPO plus the NLL term"
        )


def _evaluation(r: Recipe, errors: list[str], warnings: list[str]) -> None:
    t = r.training
    has_eval = r.data.eval is not None
    if not has_eval:
        if t.eval_strategy != "no":
            errors.append(
                f"training.eval_strategy is {t.eval_strategy!r} but data.eval is not set; add a "
                "data.eval source or set training.eval_strategy: no"
            )
        if t.eval_on_start:
            errors.append(
                "training.eval_on_start is true but data.eval is not set; add a data.eval source"
            )
        if t.generate_during_eval:
            warnings.append(
                "training.generate_during_eval is true but data.eval is not set: nothing is "
                "generated"
            )
    if t.eval_strategy == "no" and t.eval_on_start and has_eval:
        warnings.append(
            "training.eval_on_start is true with training.eval_strategy 'no': only the first "
            "evaluation runs"
        )


def _best_model(r: Recipe, errors: list[str], warnings: list[str]) -> None:
    t = r.training
    if t.save_strategy == "best" and t.metric_for_best_model is None:
        errors.append(
            "training.save_strategy 'best' needs training.metric_for_best_model "
            "(e.g. eval_loss or eval_rewards/accuracies)"
        )
    if t.save_strategy == "best" and t.eval_strategy == "no":
        errors.append(
            "training.save_strategy 'best' needs an evaluation: set training.eval_strategy "
            "to steps or epoch (and data.eval)"
        )
    if t.metric_for_best_model is not None:
        name = t.metric_for_best_model.removeprefix("eval_")
        if name not in EVAL_METRICS:
            known = [f"eval_{m}" for m in EVAL_METRICS]
            close = difflib.get_close_matches(t.metric_for_best_model, known + list(EVAL_METRICS))
            hint = f"; did you mean {close[0]!r}?" if close else ""
            errors.append(
                f"training.metric_for_best_model: got {t.metric_for_best_model!r}; expected "
                f"one of {', '.join(known)} (the eval_ prefix may be left out){hint}"
            )
    if not t.load_best_model_at_end:
        return
    if t.eval_strategy == "no":
        errors.append(
            "training.load_best_model_at_end needs training.eval_strategy steps or epoch "
            "(there is nothing to pick the best checkpoint by)"
        )
        return
    if t.save_strategy == "best":
        return
    if t.save_strategy != t.eval_strategy:
        errors.append(
            f"training.load_best_model_at_end needs training.save_strategy "
            f"({t.save_strategy!r}) to match training.eval_strategy ({t.eval_strategy!r})"
        )
    elif t.save_strategy == "steps":
        eval_steps = t.eval_steps if t.eval_steps is not None else t.logging_steps
        if eval_steps >= 1 and t.save_steps >= 1 and t.save_steps % eval_steps != 0:
            errors.append(
                f"training.load_best_model_at_end needs training.save_steps ({t.save_steps:g}) "
                f"to be a multiple of training.eval_steps ({eval_steps:g})"
            )


def _intervals(r: Recipe, errors: list[str], warnings: list[str]) -> None:
    t = r.training
    for name in ("logging_steps", "save_steps", "eval_steps"):
        value = getattr(t, name)
        if value is not None and value > 1 and value != int(value):
            errors.append(
                f"training.{name}: got {value}; expected a whole number of steps, or a share "
                "of the total steps below 1"
            )
    pairs = (
        ("eval_steps", "eval_strategy"),
        ("save_steps", "save_strategy"),
        ("logging_steps", "logging_strategy"),
    )
    for steps, strategy in pairs:
        if getattr(t, steps) != _default(steps) and getattr(t, strategy) != "steps":
            warnings.append(
                f"training.{steps} is set but training.{strategy} is "
                f"{getattr(t, strategy)!r}, so it has no effect"
            )
    if t.max_steps == 0 or (t.max_steps == -1 and t.num_train_epochs == 0):
        errors.append(
            "nothing to train: set training.max_steps > 0 or training.num_train_epochs > 0"
        )
    if t.max_steps > 0 and t.warmup_steps >= t.max_steps:
        warnings.append(
            f"training.warmup_steps ({t.warmup_steps}) >= training.max_steps ({t.max_steps}): "
            "the learning rate never reaches its peak"
        )
    if t.warmup_steps > 0 and t.warmup_ratio > 0:
        warnings.append(
            "training.warmup_steps and training.warmup_ratio are both set; warmup_steps wins"
        )


def _precision_and_devices(r: Recipe, errors: list[str], warnings: list[str]) -> None:
    t = r.training
    if t.fp16 and t.bf16:
        errors.append("training.fp16 and training.bf16 are both true; choose one")
    if t.dataloader_num_workers == 0:
        if t.dataloader_prefetch_factor is not None:
            errors.append(
                "training.dataloader_prefetch_factor needs training.dataloader_num_workers > 0"
            )
        if t.dataloader_persistent_workers:
            errors.append(
                "training.dataloader_persistent_workers needs training.dataloader_num_workers > 0"
            )
    if t.gradient_checkpointing_kwargs and not t.gradient_checkpointing:
        warnings.append(
            "training.gradient_checkpointing_kwargs is set but training.gradient_checkpointing "
            "is false, so it has no effect"
        )


def _optimizer(r: Recipe, errors: list[str], warnings: list[str]) -> None:
    optim = r.training.optim
    if optim not in ENGINE_OPTIMIZERS and not r.training.adafactor:
        errors.append(
            f"training.optim: got {optim!r}; the cpo engine builds {', '.join(ENGINE_OPTIMIZERS)}"
        )
    if r.training.lr_scheduler_type == "reduce_lr_on_plateau":
        errors.append(
            "training.lr_scheduler_type: got 'reduce_lr_on_plateau'; not supported by the cpo "
            "engine, which steps the schedule once per optimizer step without a metric (use "
            "e.g. cosine or cosine_with_min_lr)"
        )


def _model_kwargs(r: Recipe, errors: list[str], warnings: list[str]) -> None:
    """`model_init_kwargs` must not contradict the `model:` section (one place per setting)."""
    kwargs = r.training.model_init_kwargs or {}
    owned = {
        "dtype": "dtype",
        "torch_dtype": "dtype",
        "revision": "revision",
        "trust_remote_code": "trust_remote_code",
        "attn_implementation": "attn_implementation",
        "gguf_file": "gguf_file",
    }
    for key, field in owned.items():
        if key in kwargs:
            errors.append(
                f"training.model_init_kwargs.{key}: set model.{field} instead (the model "
                "section is the one place for it)"
            )


def _reporting_and_hub(r: Recipe, errors: list[str], warnings: list[str]) -> None:
    t = r.training
    if isinstance(t.report_to, list) and "none" in t.report_to and len(t.report_to) > 1:
        errors.append(
            f"training.report_to: got {t.report_to}; 'none' cannot be combined with trackers"
        )
    names = [t.report_to] if isinstance(t.report_to, str) else list(t.report_to or [])
    unsupported = [n for n in names if n not in (*ENGINE_TRACKERS, "none", "all")]
    if unsupported:
        errors.append(
            f"training.report_to: {', '.join(map(repr, unsupported))} not supported by the cpo "
            f"engine; choose from {', '.join(ENGINE_TRACKERS)}, all or none (metrics.jsonl is "
            "always written)"
        )
    if t.push_to_hub and not t.hub_model_id:
        errors.append(
            "training.push_to_hub is true but training.hub_model_id is not set; set it to "
            "user/name (or org/name)"
        )


def _builtin_models(r: Recipe, errors: list[str], warnings: list[str]) -> None:
    """`builtin:NAME` must name a model cpo ships (checked now, not when the model loads)."""
    named = {
        "name_or_path": r.model.name_or_path,
        "tokenizer_name_or_path": r.model.tokenizer_name_or_path,
    }
    for field, value in named.items():
        problem = None if value is None else unknown_builtin(value)
        if problem is not None:
            errors.append(f"model.{field}: {problem}")


def _distributed(r: Recipe, errors: list[str], warnings: list[str]) -> None:
    from cpo_cli.recipe.distributed import check_distributed

    check_distributed(r.training, errors, warnings)


def _peft(r: Recipe, errors: list[str], warnings: list[str]) -> None:
    if r.peft is not None and r.training.learning_rate <= 1e-6:
        warnings.append(
            f"peft is set but training.learning_rate is {r.training.learning_rate:g}: LoRA "
            "usually needs a much higher rate (e.g. 5e-5 to 2e-4)"
        )


RULES: tuple[Rule, ...] = (
    _lengths,
    _loss_knobs,
    _evaluation,
    _best_model,
    _intervals,
    _precision_and_devices,
    _optimizer,
    _model_kwargs,
    _reporting_and_hub,
    _builtin_models,
    _distributed,
    _peft,
)


def check_rules(recipe: Recipe) -> Problems:
    """(errors, warnings) from every cross-field rule."""
    errors: list[str] = []
    warnings: list[str] = []
    for rule in RULES:
        rule(recipe, errors, warnings)
    return errors, warnings
