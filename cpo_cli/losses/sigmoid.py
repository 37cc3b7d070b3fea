"""The sigmoid (Bradley-Terry) preference loss of CPO and DPO, with conservative label smoothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def sigmoid_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-pair CPO sigmoid loss (https://arxiv.org/abs/2401.08417, eq. 3; cDPO label smoothing).

        Δ = chosen − rejected
        loss = −(1 − ε)·logσ(β·Δ) − ε·logσ(−β·Δ)

    `chosen`/`rejected` are per-pair rewards: summed log-probs, or their AlphaPO transform.
    ε = `label_smoothing` is the assumed probability that a pair's labels are flipped.
    """
    import torch.nn.functional as F

    delta = chosen - rejected
    return -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(
        -beta * delta
    )
