"""The NaN/Inf guard of the training loop.

Per micro-batch nothing is read back from the device: the losses are summed there. Once per
optimizer step, after `clip_grad_norm_`, one small tensor [loss sum non-finite, gradient norm,
SIGTERM received, SIGUSR1 received] is summed across processes and copied to the host: the one
host sync of the step. It decides, the same way on every process, whether the update is
applied, whether the run has diverged, and whether to stop for a signal.

A step whose loss or gradient norm is NaN/inf is skipped (no update; its data counts as used).
After `max_nonfinite_steps` such steps in a row the run stops. Before any checkpoint or final
model is written the weights themselves are checked, so a non-finite tensor is never saved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cpo_cli.errors import TrainingDiverged


@dataclass(frozen=True)
class StepCheck:
    """What the one host read of an optimizer step found."""

    loss_finite: bool
    #: None when the backend does not report it (DeepSpeed without clipping)
    grad_norm: float | None
    #: the stop signal that reached at least one process (SIGTERM first), or None
    stop_signal: int | None

    @property
    def stop(self) -> bool:
        return self.stop_signal is not None

    @property
    def grad_finite(self) -> bool:
        return self.grad_norm is None or math.isfinite(self.grad_norm)


def check_step(
    accelerator: Any, loss_sum: Any, grad_norm: Any, *, received: int | None
) -> StepCheck:
    """The step's one host sync (and, with several processes, one small all-reduce).
    `received`: the stop signal this process got, if any."""
    import signal

    import torch

    device = loss_sum.device
    norm = _local(grad_norm)
    known = norm is not None
    norm_value = torch.as_tensor(norm if known else 0.0, device=device).float().reshape(())
    values = torch.stack(
        [
            (~torch.isfinite(loss_sum.detach())).float().reshape(()),
            norm_value,
            torch.tensor(float(received == signal.SIGTERM), device=device),
            torch.tensor(float(received == signal.SIGUSR1), device=device),
        ]
    )
    processes = accelerator.num_processes if accelerator is not None else 1
    if processes > 1:
        values = accelerator.reduce(values, "sum")
    loss_bad, total_norm, terms, usr1s = values.tolist()
    stop_signal = signal.SIGTERM if terms > 0 else signal.SIGUSR1 if usr1s > 0 else None
    return StepCheck(
        loss_finite=loss_bad == 0,
        # every process holds the same (all-reduced) gradient norm
        grad_norm=total_norm / processes if known else None,
        stop_signal=stop_signal,
    )


def _local(tensor: Any) -> Any:
    """A DTensor (FSDP2) as the plain tensor it stands for."""
    if tensor is not None and hasattr(tensor, "full_tensor"):
        return tensor.full_tensor()
    return tensor


@dataclass
class NonFiniteStreak:
    """Non-finite optimizer steps in a row; the run stops when `limit` is reached."""

    limit: int
    length: int = 0
    first_step: int | None = None

    def update(self, step: int, finite: bool) -> None:
        if finite:
            self.length, self.first_step = 0, None
            return
        self.length += 1
        if self.first_step is None:
            self.first_step = step

    @property
    def exhausted(self) -> bool:
        return self.length >= self.limit


def skipped_message(step: int, check: StepCheck, streak: NonFiniteStreak) -> str:
    what = [] if check.loss_finite else ["loss"]
    if not check.grad_finite:
        what.append(f"gradient norm ({check.grad_norm})")
    return (
        f"step {step}: non-finite {' and '.join(what)}; its update was skipped "
        f"({streak.length} in a row, the run stops at {streak.limit})"
    )


def diverged_error(streak: NonFiniteStreak, kept: str) -> TrainingDiverged:
    """The error that ends a run whose streak reached its limit; `kept` names what is safe."""
    first, now = streak.first_step, (streak.first_step or 0) + streak.length - 1
    steps = f"step {now}" if first == now else f"steps {first}-{now}"
    return TrainingDiverged(
        f"training diverged: the loss or gradient norm was NaN/inf at {steps} "
        f"({streak.length} in a row, training.max_nonfinite_steps={streak.limit}); those "
        f"updates were skipped and nothing non-finite was saved; {kept}",
        hint="lower training.learning_rate (or add warmup), keep training.max_grad_norm "
        "clipping on, and check the data; resume from the last good checkpoint with "
        "training.resume_from_checkpoint=last",
    )


def nonfinite_weights(model: Any, accelerator: Any = None) -> list[str]:
    """Names of parameters holding a NaN/inf value (on any process); empty when all are
    finite. One pass over the weights and one host read: a tensor's sum is finite only when
    every element is (NaN and inf propagate), and a sum is ~30x cheaper than
    `isfinite(...).all()` on a CPU; only a non-finite sum (which a huge but finite tensor can
    also give, by overflow) is looked at element by element."""
    import torch

    names, sums = [], []
    for name, param in model.named_parameters():
        local = param.to_local() if hasattr(param, "to_local") else param
        names.append(name)
        sums.append(torch.isfinite(local.detach().sum()))
    if not sums:
        return []
    bad = (~torch.stack(sums)).float()
    if accelerator is not None and accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, "sum")
    suspects = {n for n, b in zip(names, bad.tolist(), strict=True) if b > 0}
    if not suspects:
        return []
    found = []
    for name, param in model.named_parameters():
        if name in suspects:
            local = param.to_local() if hasattr(param, "to_local") else param
            if not bool(torch.isfinite(local.detach()).all()):
                found.append(name)
    # with several processes, another one may hold the bad shard: trust the reduced flags then
    return found if accelerator is None or accelerator.num_processes == 1 else sorted(suspects)
