"""`training.auto_find_batch_size`: on an out-of-memory error, halve the per-device micro-batch,
double the gradient accumulation (the effective batch stays the same) and start the run again,
as the HF Trainer does. With the longest batch first (`group_by_length`,
`max_tokens_per_batch`) the error, if any, comes at step 1."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from cpo_cli import console

T = TypeVar("T")


def is_out_of_memory(exc: BaseException) -> bool:
    """An accelerator's (or the CPU allocator's) out-of-memory error, as accelerate tells it."""
    import torch
    from accelerate.utils.memory import should_reduce_batch_size

    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, Exception) and should_reduce_batch_size(exc)
    )


def halved(loaded: Any) -> Any | None:
    """The recipe with half the micro-batch (and its token budget) and twice the accumulation,
    or None when the micro-batch is already one pair."""
    training = loaded.recipe.training
    if training.per_device_train_batch_size <= 1:
        return None
    update: dict[str, Any] = {
        "per_device_train_batch_size": training.per_device_train_batch_size // 2,
        "gradient_accumulation_steps": training.gradient_accumulation_steps * 2,
    }
    if training.max_tokens_per_batch is not None:
        update["max_tokens_per_batch"] = max(1, training.max_tokens_per_batch // 2)
    recipe = loaded.recipe.model_copy(update={"training": training.model_copy(update=update)})
    return dataclasses.replace(loaded, recipe=recipe)


def run_with_auto_batch(run: Callable[[Any], T], loaded: Any) -> T:
    """`run(loaded)`, retried with `halved` recipes on out-of-memory errors when the recipe
    asks for `auto_find_batch_size` (an error at batch 1, or without it, propagates)."""
    while True:
        try:
            return run(loaded)
        except Exception as exc:
            smaller = halved(loaded) if loaded.recipe.training.auto_find_batch_size else None
            if smaller is None or not is_out_of_memory(exc):
                raise
            _release_memory()
            t = smaller.recipe.training
            console.warn(
                "out of memory: training.auto_find_batch_size starts again with "
                f"per_device_train_batch_size={t.per_device_train_batch_size} and "
                f"gradient_accumulation_steps={t.gradient_accumulation_steps} "
                "(same effective batch)"
            )
            loaded = smaller


def _release_memory() -> None:
    import gc

    gc.collect()
    from accelerate.utils.memory import clear_device_cache

    clear_device_cache()
