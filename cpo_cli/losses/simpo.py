"""SimPO: the sigmoid loss with a target reward margin, on length-averaged log-probs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cpo_cli.losses.sigmoid import sigmoid_loss

if TYPE_CHECKING:
    import torch


def simpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    *,
    beta: float,
    simpo_gamma: float = 0.5,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-pair SimPO loss (https://arxiv.org/abs/2405.14734, eq. 6), with label smoothing.

        Δ' = chosen − rejected − γ/β
        loss = −(1 − ε)·logσ(β·Δ') − ε·logσ(−β·Δ')      (= −logσ(β·Δ − γ) when ε = 0)

    `chosen`/`rejected` are length-averaged log-probs (or their AlphaPO transform). With
    `cpo_alpha > 0` the engine adds the behaviour-cloning NLL: that is CPO-SimPO. AlphaPO
    (https://arxiv.org/abs/2501.03884) is this loss on the α-transformed rewards.
    """
    return sigmoid_loss(
        chosen - simpo_gamma / beta, rejected, beta=beta, label_smoothing=label_smoothing
    )
