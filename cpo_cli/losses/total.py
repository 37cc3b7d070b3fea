"""The terms added to the mean preference loss: behaviour-cloning NLL and the MoE router loss."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def chosen_nll(chosen_logp_total: torch.Tensor, chosen_token_count: torch.Tensor) -> torch.Tensor:
    """Token-mean negative log-likelihood over every chosen answer token of the batch.

        NLL = −Σ_{chosen tokens t} log p(t) / #chosen tokens

    The CPO behaviour-cloning regulariser (https://arxiv.org/abs/2401.08417, eq. 4); equal to
    the cross-entropy TRL computes on the chosen rows.
    """
    return -chosen_logp_total / chosen_token_count.clamp(min=1)


def total_loss(
    pair_losses: torch.Tensor,
    *,
    nll: torch.Tensor | None = None,
    cpo_alpha: float = 0.0,
    aux_loss: torch.Tensor | None = None,
    aux_loss_coef: float = 0.0,
) -> torch.Tensor:
    """The scalar that is differentiated:

        loss = mean(pair_losses) + cpo_alpha · NLL + router_aux_loss_coef · aux_loss

    The NLL term is left out when `cpo_alpha` is 0 (pure SimPO/AlphaPO), the router term when
    the model has no router loss (dense models) or its coefficient is 0.
    """
    loss = pair_losses.mean()
    if cpo_alpha != 0 and nll is not None:
        loss = loss + cpo_alpha * nll
    if aux_loss is not None and aux_loss_coef != 0:
        loss = loss + aux_loss_coef * aux_loss.to(loss.device)
    return loss
