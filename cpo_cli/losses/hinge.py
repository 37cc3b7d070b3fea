"""The hinge preference loss of SLiC / RSO."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def hinge_loss(chosen: torch.Tensor, rejected: torch.Tensor, *, beta: float) -> torch.Tensor:
    """Per-pair hinge loss (SLiC https://arxiv.org/abs/2305.10425, RSO https://arxiv.org/abs/2309.06657).

        loss = max(0, 1 − β·(chosen − rejected))

    β is the reciprocal of the margin: pairs whose reward gap exceeds 1/β contribute nothing.
    """
    import torch

    return torch.relu(1 - beta * (chosen - rejected))
