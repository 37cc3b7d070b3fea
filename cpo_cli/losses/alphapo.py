"""The AlphaPO reward shape, applied to per-sequence log-probs before any loss."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def alphapo_reward(logps: torch.Tensor, alpha: float) -> torch.Tensor:
    """AlphaPO reward (https://arxiv.org/abs/2501.03884, eq. 7) of per-sequence log-probs.

        p = exp(logp);  r = (1 − p^(−α)) / α = −expm1(−α·logp) / α;   α = 0 → r = logp

    TRL 1.16 applies it to every loss type whenever `alpha != 0` (in Δ and in the logged
    rewards). We compute p^(−α) as exp(−α·logp): the same value, without exp(logp) underflowing
    to 0 (and p^(−α) to inf) for long answers with summed log-probs.
    """
    if alpha == 0:
        return logps
    import torch

    return -torch.expm1(-alpha * logps) / alpha
