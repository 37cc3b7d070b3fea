"""Small questions asked of a transformers model: its config, vocabulary, dtype, device,
attention implementation, what its forward accepts.

Kept apart, at the bottom of the forward's modules, because the model run, the layout probe
and the public log-prob entry points all ask them, and each must see the model under the same
unwrapping (`core_model`). Most take the unwrapped model (`core`); none runs the model.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

#: attention implementations that take a custom dense 4D mask
DENSE_MASK_ATTENTION = ("sdpa", "eager")
FLEX_ATTENTION = "flex_attention"


def core_model(model: nn.Module) -> Any:
    """The transformers model under DDP/FSDP (`.module`), torch.compile (`._orig_mod`) and PEFT
    (`get_base_model`) wrappers."""
    core: Any = model
    while not hasattr(core, "config") and (hasattr(core, "module") or hasattr(core, "_orig_mod")):
        core = getattr(core, "module", None) or core._orig_mod
    if hasattr(core, "get_base_model"):
        core = core.get_base_model()
    return core


def runs_in_half_precision(model: nn.Module) -> bool:
    """Whether the model's forward computes in bf16/fp16: its weights are half, or it runs under
    autocast — accelerate's mixed precision wraps the prepared module's forward (and marks it
    with `_original_forward`), or the caller holds an autocast context."""
    import torch

    level: Any = model
    while level is not None:
        if "_original_forward" in getattr(level, "__dict__", {}):
            return True
        level = getattr(level, "module", None) or getattr(level, "_orig_mod", None)
    core = core_model(model)
    device_type = model_device(core).type
    return compute_dtype(core) in (torch.bfloat16, torch.float16) or bool(
        torch.is_autocast_enabled(device_type)
    )


def attention_implementation(model: Any) -> str:
    """The attention implementation transformers resolved for this model (`eager` if unset)."""
    core = core_model(model)
    return str(getattr(core.config, "_attn_implementation", None) or "eager")


def text_config(core: Any) -> Any:
    config = core.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def head_vocab_size(core: Any) -> int:
    head = core.get_output_embeddings()
    if head is not None and hasattr(head, "weight"):
        # a ZeRO-3 parameter is an empty placeholder; its real shape is `ds_shape`
        return int(getattr(head.weight, "ds_shape", head.weight.shape)[0])
    return int(text_config(core).vocab_size)


def softcap(core: Any) -> float | None:
    cap = getattr(text_config(core), "final_logit_softcapping", None)
    return float(cap) if cap else None


def sliding_window_size(core: Any) -> int | None:
    text = text_config(core)
    window = getattr(text, "sliding_window", None)
    if not window or getattr(text, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(text, "layer_types", None)
    if layer_types and "sliding_attention" not in layer_types:
        return None
    return int(window)


def router_loss_enabled(core: Any) -> bool:
    return bool(getattr(text_config(core), "output_router_logits", False))


def is_encoder_decoder(core: Any) -> bool:
    return bool(getattr(core.config, "is_encoder_decoder", False))


def accepts(core: Any, name: str) -> bool:
    try:
        return name in inspect.signature(core.forward).parameters
    except (TypeError, ValueError):
        return False


def compute_dtype(core: Any) -> torch.dtype:
    return core.get_input_embeddings().weight.dtype


def model_device(core: Any) -> torch.device:
    return core.get_input_embeddings().weight.device


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}
