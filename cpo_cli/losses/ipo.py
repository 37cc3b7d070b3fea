"""The IPO squared preference loss."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def ipo_loss(chosen: torch.Tensor, rejected: torch.Tensor, *, beta: float) -> torch.Tensor:
    """Per-pair IPO loss (https://arxiv.org/abs/2310.12036, eq. 17, β playing the role of τ).

        loss = (chosen − rejected − 1/(2β))²

    Used on length-averaged log-probs. It regresses the gap to a fixed target instead of pushing
    it to infinity, which is why IPO does not overfit deterministic preferences.
    """
    return (chosen - rejected - 1 / (2 * beta)) ** 2
