"""One optimizer step's micro-batches on every process: what each counts for
(`cpo_cli.engine.objective.StepTotals`, summed over the processes) and when gradients are
synchronised. The loop fetches a step's window of micro-batches ahead
(`cpo_cli.engine.schedule.step_windows`)."""

from __future__ import annotations

from typing import Any

from cpo_cli.engine.objective import StepTotals


def step_totals(
    accelerator: Any, window: list[tuple[Any, dict[str, int]]], accumulation: int
) -> StepTotals:
    """The step's pairs and chosen tokens over the window, summed over every process on the
    device (one small all-reduce per step, no host read)."""
    pairs = sum(sizes["pairs"] for _, sizes in window)
    chosen = sum(sizes["chosen_tokens"] for _, sizes in window)
    processes = accelerator.num_processes
    if processes <= 1:
        return StepTotals(float(pairs), float(max(chosen, 1)), accumulation)
    import torch

    local = torch.tensor([pairs, chosen], device=accelerator.device, dtype=torch.long)
    total = accelerator.reduce(local, "sum").float()
    return StepTotals(total[0], total[1].clamp(min=1), accumulation, processes)


def gradient_sync(accelerator: Any, model: Any, *, syncs: bool) -> Any:
    """Gradients are synchronised (DDP all-reduce, FSDP reduce-scatter, DeepSpeed's optimizer
    step) on the last micro-batch of a step only. Set here, as HF Trainer sets it, because the
    window was fetched ahead and accelerate's own counter sees the loader's end too early."""
    from contextlib import nullcontext

    from accelerate.utils import DistributedType

    accelerator.gradient_state._set_sync_gradients(syncs)
    if syncs or accelerator.distributed_type == DistributedType.DEEPSPEED:
        return nullcontext()  # DeepSpeed reads the flag in its backward instead
    return accelerator.no_sync(model)
