"""Evaluation: the training loss and metrics on held-out pairs, `eval_` prefixed. Used by the
loop (`eval_strategy`) and by `cpo eval`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cpo_cli.recipe.training import TrainingConfig


def evaluate_model(
    model: Any,
    dataloader: Any,
    training: TrainingConfig,
    accelerator: Any,
    *,
    batches_on_every_process: int | None = None,
) -> dict[str, float]:
    """Mean loss and metrics over every pair of `dataloader`, keys prefixed `eval_`.

    `dataloader` yields `(batch, sizes)` as built by `cpo_cli.engine.data.build_eval_dataloader`
    (this process's share of the pairs; batches are moved to the accelerator's device here). The
    model is put back in training mode afterwards only if it was in it before.

    With `average_tokens_across_devices` the NLL term of `eval_loss` (and `eval_nll_loss`) is
    one token-weighted mean over every evaluated pair, as in training; otherwise the mean of
    per-batch means, as TRL. Under FSDP/ZeRO-3 every forward is collective, so a process with
    fewer batches runs `batches_on_every_process` forwards in all, the extra ones discarded.
    """
    import torch
    from accelerate.utils import send_to_device

    from cpo_cli.engine.metric_means import MetricMeans
    from cpo_cli.engine.objective import (
        batch_loss_and_metrics,
        effective_cpo_alpha,
        token_weighted_nll,
    )
    from cpo_cli.metric_names import EVAL_METRICS

    by_tokens = token_weighted_nll(training)
    cpo_alpha = effective_cpo_alpha(training)
    was_training = model.training
    model.eval()
    means = MetricMeans()
    # every metric present on every process, even one with no pairs: the sums are reduced
    means.add({name: 0.0 for name in EVAL_METRICS}, weight=0.0)
    batches = 0
    last = None
    try:
        with torch.no_grad():
            for cpu_batch, sizes in dataloader:
                batch = send_to_device(cpu_batch, accelerator.device) if accelerator else cpu_batch
                loss, metrics = batch_loss_and_metrics(model, batch, training)
                batches, last = batches + 1, batch
                if by_tokens:
                    nll = metrics.pop("nll_loss")
                    means.add({"nll_loss": nll}, weight=float(sizes["chosen_tokens"]))
                    loss = loss.detach() - cpo_alpha * nll  # the NLL term is added back below
                means.add({"loss": loss.detach(), **metrics}, weight=float(sizes["pairs"]))
            for _ in range((batches_on_every_process or 0) - batches):
                if last is None:
                    last = _any_batch(dataloader, accelerator)
                batch_loss_and_metrics(model, last, training)  # collective forward, discarded
    finally:
        if was_training:
            model.train()
    out = means.means(accelerator)
    if by_tokens and "loss" in out:
        out["loss"] += cpo_alpha * out.get("nll_loss", 0.0)
    return {f"eval_{k}": v for k, v in out.items()}


def _any_batch(dataloader: Any, accelerator: Any) -> Any:
    """A stand-in batch for a process whose share of the evaluation pairs is empty (its result
    is discarded): one short pair of low token ids, collated as the loader collates."""
    from accelerate.utils import send_to_device

    row = {"prompt_input_ids": [1, 2], "chosen_input_ids": [3], "rejected_input_ids": [4]}
    batch, _ = dataloader.collate_fn([row])
    return send_to_device(batch, accelerator.device) if accelerator else batch
