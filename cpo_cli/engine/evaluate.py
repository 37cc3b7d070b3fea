"""Evaluation: the training loss and metrics on held-out pairs, `eval_` prefixed. Used by the
loop (`eval_strategy`) and by `cpo eval`."""

from __future__ import annotations

from typing import Any


class MetricMeans:
    """Running pair-weighted sums of scalar metrics. Only scalars cross processes: one small
    tensor of sums is all-reduced when the means are read."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weight = 0.0

    def add(self, metrics: dict[str, Any], weight: float) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + _scalar(value) * weight
        self.weight += weight

    def means(self, accelerator: Any = None) -> dict[str, float]:
        keys = sorted(self.sums)
        values = [self.sums[k] for k in keys] + [self.weight]
        if accelerator is not None and accelerator.num_processes > 1:
            import torch

            reduced = accelerator.reduce(
                torch.tensor(values, dtype=torch.float64, device=accelerator.device), "sum"
            )
            values = reduced.tolist()
        total = values[-1]
        if total == 0:
            return {}
        return {k: v / total for k, v in zip(keys, values[:-1], strict=True)}

    def reset(self) -> None:
        self.sums.clear()
        self.weight = 0.0


def _scalar(value: Any) -> float:
    return float(value.item()) if hasattr(value, "item") else float(value)


def evaluate_model(
    model: Any, dataloader: Any, training: Any, accelerator: Any
) -> dict[str, float]:
    """Mean loss and metrics over every pair of `dataloader`, keys prefixed `eval_`.

    `dataloader` yields `(batch, sizes)` as built by `cpo_cli.engine.data.build_eval_dataloader`
    (this process's share of the pairs; batches are moved to the accelerator's device here). The
    model is put back in training mode afterwards only if it was in it before.
    """
    import torch
    from accelerate.utils import send_to_device

    from cpo_cli.engine.step import batch_loss_and_metrics

    was_training = model.training
    model.eval()
    means = MetricMeans()
    try:
        with torch.no_grad():
            for cpu_batch, sizes in dataloader:
                batch = send_to_device(cpu_batch, accelerator.device) if accelerator else cpu_batch
                loss, metrics = batch_loss_and_metrics(model, batch, training)
                means.add({"loss": loss.detach(), **metrics}, weight=float(sizes["pairs"]))
    finally:
        if was_training:
            model.train()
    return {f"eval_{k}": v for k, v in means.means(accelerator).items()}
