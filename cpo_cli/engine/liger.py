"""`training.use_liger_kernel`: Liger-Kernel's Triton kernels for the model's layers (RMSNorm,
SwiGLU, RoPE, ...), applied through its public `apply_liger_kernel_to_<model_type>(model=...)`.

Liger's loss kernels (cross-entropy, fused linear cross-entropy) are always turned off: cpo's
chunked LM head is the loss path. Refused with a clear message where the optional
`liger-kernel` package or a GPU is missing (its kernels are Triton, GPU-only)."""

from __future__ import annotations

import importlib
from typing import Any

from cpo_cli.errors import DependencyMissingError, ModelLoadError

#: Liger's loss kernels: cpo computes the log-probs itself
_LOSS_KERNELS = ("cross_entropy", "fused_linear_cross_entropy")


def apply_liger(model: Any, use_liger_kernel: bool | None, config: dict[str, bool] | None) -> bool:
    """Patch `model` in place with Liger's kernels when asked; True when its SwiGLU kernel
    replaced the MLPs (so cpo's own MLP activation saving stays out of the way)."""
    if not use_liger_kernel:
        return False
    try:
        liger = importlib.import_module("liger_kernel.transformers")
    except ImportError as exc:
        raise DependencyMissingError(
            "training.use_liger_kernel: the liger-kernel package is not installed",
            hint="pip install liger-kernel (on a machine with a CUDA or ROCm GPU), or set "
            "training.use_liger_kernel=false",
        ) from exc
    import torch

    if not torch.cuda.is_available():
        raise DependencyMissingError(
            "training.use_liger_kernel: Liger-Kernel's Triton kernels need a CUDA or ROCm GPU "
            "and this machine has none",
            hint="set training.use_liger_kernel=false on this machine",
        )
    model_type = str(getattr(model.config, "model_type", ""))
    apply = getattr(liger, f"apply_liger_kernel_to_{model_type}", None)
    if apply is None:
        raise ModelLoadError(
            f"training.use_liger_kernel: Liger-Kernel has no kernels for model type {model_type!r}",
            hint="set training.use_liger_kernel=false for this model",
        )
    kwargs: dict[str, Any] = {k: bool(v) for k, v in (config or {}).items()}
    kwargs.update(dict.fromkeys(_LOSS_KERNELS, False))
    try:
        apply(model=model, **kwargs)
    except TypeError as exc:  # a liger_kernel_config key this model's function does not take
        raise ModelLoadError(
            f"training.liger_kernel_config: {exc}",
            hint=f"see the arguments of liger_kernel.transformers.apply_liger_kernel_to_"
            f"{model_type}",
        ) from exc
    return bool(kwargs.get("swiglu", True))
