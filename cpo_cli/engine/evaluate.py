"""Evaluation: the training loss and metrics on held-out pairs, `eval_` prefixed. Used by the
loop (`eval_strategy`) and by `cpo eval`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cpo_cli.recipe.training import TrainingConfig


def evaluate_model(
    model: Any, dataloader: Any, training: TrainingConfig, accelerator: Any
) -> dict[str, float]:
    """Mean loss and metrics over every pair of `dataloader`, keys prefixed `eval_`.

    `dataloader` yields `(batch, sizes)` as built by `cpo_cli.engine.data.build_eval_dataloader`
    (this process's share of the pairs; batches are moved to the accelerator's device here). The
    model is put back in training mode afterwards only if it was in it before.
    """
    import torch
    from accelerate.utils import send_to_device

    from cpo_cli.engine.metric_means import MetricMeans
    from cpo_cli.engine.objective import batch_loss_and_metrics

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
