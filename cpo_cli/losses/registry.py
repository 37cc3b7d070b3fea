"""The single list of loss types. Torch-free, so the recipe validates `training.loss_type`
against it when a recipe loads (not at step 1), and docs and `--help` are generated from it.
The functions themselves are imported lazily by `get_loss_fn`."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LossSpec:
    name: str
    summary: str
    paper: str
    #: training fields this loss reads besides `beta` and `alpha` (the AlphaPO reward transform
    #: applies to every loss, as in TRL); a knob set for a loss that ignores it warns
    knobs: tuple[str, ...]
    #: True: per-token average log-probs (ipo, simpo); False: summed (sigmoid, hinge)
    averages_logps: bool
    #: "module:function" of the pure loss function, imported on first use
    fn_path: str
    #: the per-pair loss in terms of Δ = r(chosen) − r(rejected), β and γ (label smoothing off)
    formula: str
    #: False: the behaviour-cloning NLL term is off whatever `cpo_alpha` says (alphapo, as in
    #: TRL's CPOConfig)
    uses_nll: bool = True


LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        LossSpec(
            "sigmoid",
            "CPO/DPO Bradley-Terry loss, -logsigmoid(beta * margin), with optional label smoothing",
            "https://arxiv.org/abs/2401.08417",
            ("label_smoothing",),
            False,
            "cpo_cli.losses.sigmoid:sigmoid_loss",
            "−logσ(β·Δ)",
        ),
        LossSpec(
            "hinge",
            "SLiC/RSO hinge loss, relu(1 - beta * margin); beta is the reciprocal of the margin",
            "https://arxiv.org/abs/2309.06657",
            (),
            False,
            "cpo_cli.losses.hinge:hinge_loss",
            "relu(1 − β·Δ)",
        ),
        LossSpec(
            "ipo",
            "IPO squared loss, (margin - 1/(2 beta))^2, on length-averaged log-probs",
            "https://arxiv.org/abs/2310.12036",
            (),
            True,
            "cpo_cli.losses.ipo:ipo_loss",
            "(Δ − 1/(2β))²",
        ),
        LossSpec(
            "simpo",
            "SimPO, -logsigmoid(beta * margin - gamma) on length-averaged log-probs; "
            "CPO-SimPO when cpo_alpha > 0",
            "https://arxiv.org/abs/2405.14734",
            ("simpo_gamma", "label_smoothing"),
            True,
            "cpo_cli.losses.simpo:simpo_loss",
            "−logσ(β·Δ − γ)",
        ),
        LossSpec(
            "alphapo",
            "AlphaPO: SimPO on the alpha-transformed reward (1 - p^-alpha)/alpha, without the "
            "behaviour-cloning term",
            "https://arxiv.org/abs/2501.03884",
            ("simpo_gamma", "label_smoothing"),
            True,
            "cpo_cli.losses.simpo:simpo_loss",
            "−logσ(β·Δ − γ)",
            uses_nll=False,
        ),
    )
}

LOSS_NAMES: tuple[str, ...] = tuple(LOSSES)


def effective_cpo_alpha(loss_type: str, cpo_alpha: float) -> float:
    """The weight of the NLL term actually trained: `cpo_alpha`, or 0 for a loss without one."""
    return float(cpo_alpha) if LOSSES[loss_type].uses_nll else 0.0


def get_loss_fn(name: str) -> Callable[..., Any]:
    """The loss function registered under `name` (imports torch on first call)."""
    module_name, attr = LOSSES[name].fn_path.split(":")
    return getattr(importlib.import_module(module_name), attr)  # type: ignore[no-any-return]
