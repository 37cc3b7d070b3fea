"""The training objective of one batch: its loss (to differentiate) and TRL's metrics, from the
log-prob forward, the registry's loss and the CPO extras. (Not an optimizer step: the loop owns
those.)

Semantics follow TRL 1.16's CPOTrainer (`get_batch_loss_metrics`): summed log-probs for
sigmoid/hinge, per-token averages for ipo/simpo/alphapo; the AlphaPO reward shape whenever
`alpha != 0` (any loss type); `alphapo` is `simpo` with the NLL term off; total =
mean pair loss + cpo_alpha · NLL(chosen) + router_aux_loss_coef · router loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from cpo_cli.recipe.training import TrainingConfig


def effective_cpo_alpha(training: TrainingConfig) -> float:
    """`cpo_alpha`, except 0 for `alphapo` (TRL's CPOConfig rewrites alphapo that way)."""
    from cpo_cli.losses.registry import effective_cpo_alpha as for_loss

    return for_loss(training.loss_type, training.cpo_alpha)


def batch_loss_and_metrics(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    training: TrainingConfig,
    *,
    nll_token_count: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss to differentiate, detached scalar metrics) for one `collate_pairs` batch.

    Metrics are keyed by `cpo_cli.metric_names.PAIR_METRICS`, exactly as TRL logs them, and
    are means over this batch's pairs; `nll_loss` is 0 when the NLL term is off, as in TRL.
    `logits/*` are defined in `cpo_cli.engine.forward` (answer-predicting positions).

    The NLL term divides this batch's summed chosen-token NLL by its own chosen-token count
    (TRL's per-micro-batch mean), or by `nll_token_count` when given: the loop passes
    `StepTotals.nll_denominator`, so that over the optimizer step the term is one
    token-weighted mean. The `nll_loss` metric is always this batch's own token mean.
    """
    import torch

    from cpo_cli.engine.forward import model_config, sequence_logps
    from cpo_cli.losses.alphapo import alphapo_reward
    from cpo_cli.losses.registry import LOSSES, get_loss_fn
    from cpo_cli.losses.total import total_loss

    spec = LOSSES[training.loss_type]
    out = sequence_logps(model, batch, chunk_size=training.logprob_chunk_size)
    logps = out.averaged() if spec.averages_logps else out.logps
    b = out.num_pairs
    chosen_logps, rejected_logps = logps[:b], logps[b:]

    chosen_rewards = alphapo_reward(chosen_logps, training.alpha)
    rejected_rewards = alphapo_reward(rejected_logps, training.alpha)
    knobs = {k: getattr(training, k) for k in spec.knobs if k != "alpha"}
    pair_losses = get_loss_fn(spec.name)(
        chosen_rewards, rejected_rewards, beta=training.beta, **knobs
    )

    cpo_alpha = effective_cpo_alpha(training)
    nll = out.chosen_nll() if cpo_alpha != 0 else torch.zeros((), device=logps.device)
    nll_term = nll
    if cpo_alpha != 0 and nll_token_count is not None:
        nll_term = -out.logps[:b].sum() / nll_token_count
    aux_coef = float(getattr(model_config(model), "router_aux_loss_coef", 0.0) or 0.0)
    loss = total_loss(
        pair_losses,
        nll=nll_term,
        cpo_alpha=cpo_alpha,
        aux_loss=out.aux_loss,
        aux_loss_coef=aux_coef,
    )

    with torch.no_grad():
        beta = training.beta
        r_chosen, r_rejected = beta * chosen_rewards.detach(), beta * rejected_rewards.detach()
        logits_chosen, logits_rejected = out.mean_logits()
        metrics = {
            "rewards/chosen": r_chosen.mean(),
            "rewards/rejected": r_rejected.mean(),
            "rewards/accuracies": (r_chosen > r_rejected).float().mean(),
            "rewards/margins": (r_chosen - r_rejected).mean(),
            "logps/chosen": chosen_logps.detach().mean(),
            "logps/rejected": rejected_logps.detach().mean(),
            "logits/chosen": logits_chosen,
            "logits/rejected": logits_rejected,
            "nll_loss": nll.detach(),
        }
    return loss, metrics


def token_weighted_nll(training: TrainingConfig) -> bool:
    """`average_tokens_across_devices` (true by default): the NLL term is one token-weighted
    mean over the optimizer step; false/None: TRL's mean per micro-batch."""
    return bool(training.average_tokens_across_devices) and effective_cpo_alpha(training) != 0


@dataclass(frozen=True)
class StepTotals:
    """One optimizer step's pairs and chosen-answer tokens: every micro-batch of its window on
    every process (numbers, or device tensors after the all-reduce), and what the backward
    divides each micro-batch's loss by: `accumulation` (accelerate, or DeepSpeed set to the
    same) times `processes` (the DDP/FSDP/ZeRO gradient mean).

    The step's loss is that of one batch of all its pairs:

        L = Σ_pairs ℓ_pair / P + cpo_alpha · Σ_chosen tokens NLL / T   (+ router term per pair)

    A micro-batch with p pairs returns mean(ℓ) + cpo_alpha · Σ NLL / `nll_denominator(p)` and
    is scaled by `weight(p)` before the backward: its gradient share is then p / P of its pair
    mean plus cpo_alpha · Σ NLL / T, and the pair-weighted mean of the returned losses is L.
    Without the token weighting the NLL term stays each micro-batch's own mean, weighted like
    the rest of its loss by p / P.
    """

    pairs: Any
    chosen_tokens: Any
    accumulation: int
    processes: int = 1

    def weight(self, pairs: int) -> Any:
        """What a micro-batch of `pairs` pairs multiplies its loss by before the backward."""
        return self.accumulation * self.processes * pairs / self.pairs

    def nll_denominator(self, pairs: int) -> Any:
        """What a micro-batch of `pairs` pairs divides its summed chosen NLL by (token
        weighting over the step)."""
        return self.chosen_tokens * pairs / self.pairs
