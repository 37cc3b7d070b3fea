"""Optimizer and learning-rate schedule from the recipe's `optim` / `lr_scheduler_type` names.

Names follow transformers' `OptimizerNames` so a recipe written for the HF Trainer keeps working;
the ones we cannot build here fail with a message that lists the ones we can.
"""

from __future__ import annotations

import importlib.util
import math
from typing import TYPE_CHECKING, Any

from cpo_cli.errors import DependencyMissingError, RecipeError
from cpo_cli.recipe.choices import ENGINE_OPTIMIZERS
from cpo_cli.recipe.optim_args import parse_optim_args

if TYPE_CHECKING:
    import torch

    from cpo_cli.recipe.training import TrainingConfig

#: optimizer names (HF spelling) that need bitsandbytes, mapped to its class name
_BNB_OPTIMIZERS: dict[str, tuple[str, dict[str, Any]]] = {
    "adamw_bnb_8bit": ("AdamW8bit", {}),
    "adamw_8bit": ("AdamW8bit", {}),
    "paged_adamw_8bit": ("PagedAdamW8bit", {}),
    "paged_adamw_32bit": ("PagedAdamW32bit", {}),
    "lion_8bit": ("Lion8bit", {}),
    "lion_32bit": ("Lion32bit", {}),
    "paged_lion_8bit": ("PagedLion8bit", {}),
    "paged_lion_32bit": ("PagedLion32bit", {}),
    "rmsprop_bnb": ("RMSprop", {}),
    "rmsprop_bnb_8bit": ("RMSprop8bit", {}),
    "rmsprop_bnb_32bit": ("RMSprop32bit", {}),
}
#: the names a recipe may use (one list, in `cpo_cli.recipe.choices`); the torch ones are
#: whatever is not bitsandbytes, and a test checks each name builds here
SUPPORTED_OPTIMIZERS: tuple[str, ...] = ENGINE_OPTIMIZERS


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: matrices decay; biases and norm weights (every parameter with fewer than two
    dimensions) do not — decaying a norm's gain towards zero only hurts. Frozen parameters are
    left out, so LoRA trains only its adapters."""
    decay: list[Any] = []
    no_decay: list[Any] = []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # a ZeRO-3 parameter is an empty placeholder; its real shape is `ds_shape`
        ndim = len(getattr(param, "ds_shape", param.shape))
        (decay if ndim >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: torch.nn.Module, training: TrainingConfig) -> torch.optim.Optimizer:
    """The optimizer named by `training.optim` (or Adafactor when `training.adafactor`)."""
    import torch

    name = "adafactor" if training.adafactor else training.optim
    groups = parameter_groups(model, training.weight_decay)
    if not groups:
        raise RecipeError(
            "recipe", ["the model has no trainable parameters (check peft and model settings)"]
        )
    extra = parse_optim_args(training.optim_args)  # checked when the recipe loaded
    lr = training.learning_rate
    adam = {
        "lr": lr,
        "betas": (training.adam_beta1, training.adam_beta2),
        "eps": training.adam_epsilon,
    }
    if name in ("adamw_torch", "adamw_torch_fused"):
        # the same AdamW update; torch's fused kernel is ~10-30x faster than its default
        # per-tensor loop on a CPU, so it is used wherever torch has one for the parameters
        fused = name == "adamw_torch_fused" or _fused_adamw_available(groups)
        return torch.optim.AdamW(groups, **{**adam, "fused": fused or None, **extra})
    if name == "sgd":
        return torch.optim.SGD(groups, **{"lr": lr, **extra})
    if name == "adagrad":
        return torch.optim.Adagrad(groups, **{"lr": lr, **extra})
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, **{"lr": lr, **extra})
    if name == "adafactor":
        # torch's own Adafactor (torch >= 2.5); HF-style relative-step tricks are not applied:
        # the recipe's learning rate and schedule drive it like any other optimizer.
        return torch.optim.Adafactor(groups, **{"lr": lr, **extra})
    if name in _BNB_OPTIMIZERS:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise DependencyMissingError(
                f"training.optim={name!r} needs the bitsandbytes package, which is not installed",
                hint="pip install bitsandbytes (CUDA only), or use optim: adamw_torch",
            )
        import bitsandbytes as bnb  # type: ignore[import-not-found]

        cls_name, defaults = _BNB_OPTIMIZERS[name]
        cls = getattr(bnb.optim, cls_name)
        kwargs: dict[str, Any] = {"lr": lr, **defaults}
        if "adam" in name:
            kwargs.update(betas=adam["betas"], eps=adam["eps"])
        return cls(groups, **{**kwargs, **extra})  # type: ignore[no-any-return]
    raise RecipeError(
        "recipe",
        [
            f"training.optim: {name!r} is not supported by cpo; "
            f"choose one of {', '.join(SUPPORTED_OPTIMIZERS)}"
        ],
    )


def _fused_adamw_available(groups: list[dict[str, Any]]) -> bool:
    import torch

    params = [p for g in groups for p in g["params"]]
    return all(
        p.device.type in ("cpu", "cuda")
        and p.dtype in (torch.float32, torch.bfloat16, torch.float16)
        for p in params
    )


def warmup_steps(training: TrainingConfig, total_steps: int) -> int:
    """`warmup_steps` wins when set; otherwise `warmup_ratio` of the optimizer steps (rounded up,
    as the HF Trainer does)."""
    if training.warmup_steps > 0:
        return training.warmup_steps
    return math.ceil(total_steps * training.warmup_ratio)


def build_scheduler(
    optimizer: torch.optim.Optimizer, training: TrainingConfig, total_steps: int
) -> Any:
    """The learning-rate schedule by its transformers name, stepped once per optimizer step."""
    from transformers import get_scheduler

    # a JSON string was parsed when the recipe loaded; None means no extra arguments
    kwargs = {} if training.lr_scheduler_kwargs is None else training.lr_scheduler_kwargs
    try:
        return get_scheduler(
            str(training.lr_scheduler_type),
            optimizer,
            num_warmup_steps=warmup_steps(training, total_steps),
            num_training_steps=total_steps,
            scheduler_specific_kwargs=dict(kwargs),
        )
    except (TypeError, ValueError) as exc:
        raise RecipeError(
            "recipe",
            [
                f"training.lr_scheduler_type={training.lr_scheduler_type!r} with "
                f"lr_scheduler_kwargs={dict(kwargs)!r}: {exc}"
            ],
        ) from exc
