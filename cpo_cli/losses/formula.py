"""What a recipe optimises, in one line, derived from the loss registry (torch-free): printed at
the start of `cpo train` so a misread knob (SimPO that is really CPO-SimPO, summed log-probs
where averaged ones were meant) shows before any compute is spent."""

from __future__ import annotations

from typing import Any

from cpo_cli.losses.registry import LOSSES, effective_cpo_alpha

#: the usual name of each loss type, with and without the NLL term
_NAMES = {"sigmoid": ("CPO", "sigmoid"), "simpo": ("CPO-SimPO", "SimPO")}


def objective_name(loss_type: str, cpo_alpha: float) -> str:
    with_nll = effective_cpo_alpha(loss_type, cpo_alpha) != 0
    if loss_type in _NAMES:
        return _NAMES[loss_type][0 if with_nll else 1]
    label = {"ipo": "IPO", "alphapo": "AlphaPO"}.get(loss_type, loss_type)
    return f"{label} + NLL" if with_nll else label


def _smoothed(formula: str, epsilon: float) -> str:
    """`−logσ(z)` with label smoothing ε: `−(1−ε)·logσ(z) − ε·logσ(−(z))`."""
    if epsilon == 0 or not (formula.startswith("−logσ(") and formula.endswith(")")):
        return formula
    z = formula[len("−logσ(") : -1]
    flipped = f"−{z}" if "−" not in z and "+" not in z else f"−({z})"
    return f"−(1−ε)·logσ({z}) − ε·logσ({flipped})"


def _number(value: float) -> str:
    return f"{float(value):g}"


def describe_objective(training: Any) -> str:
    """One line: the objective's name, its formula and the values of every knob in it.

    `training` is the recipe's `TrainingConfig`. For example (the quickstart):
    `objective: CPO = mean over pairs of −logσ(β·Δ) + cpo_alpha·NLL(chosen); Δ = r(chosen) −
    r(rejected), r = log-prob of the answer summed over its tokens; β=0.1, ε=0, α=0,
    cpo_alpha=1`.
    """
    spec = LOSSES[training.loss_type]
    cpo_alpha = effective_cpo_alpha(spec.name, training.cpo_alpha)
    knobs = set(spec.knobs)
    epsilon = float(training.label_smoothing) if "label_smoothing" in knobs else 0.0
    pair_loss = _smoothed(spec.formula, epsilon)
    total = f"mean over pairs of {pair_loss}"
    if cpo_alpha != 0:
        total += " + cpo_alpha·NLL(chosen)"
    logp = "averaged over" if spec.averages_logps else "summed over"
    alpha = float(training.alpha)
    if alpha != 0:
        reward = f"r = (1 − exp(−α·logp))/α, logp = log-prob of the answer {logp} its tokens"
    else:
        reward = f"r = log-prob of the answer {logp} its tokens"
    values = [f"β={_number(training.beta)}"]
    if "simpo_gamma" in knobs:
        values.append(f"γ={_number(training.simpo_gamma)}")
    if "label_smoothing" in knobs:
        values.append(f"ε={_number(epsilon)}")
    values.append(f"α={_number(alpha)}")
    values.append(f"cpo_alpha={_number(cpo_alpha)}")
    if cpo_alpha == 0 and float(training.cpo_alpha) != 0:
        values[-1] += f" ({spec.name} has no NLL term; the recipe's {_number(training.cpo_alpha)} "
        values[-1] += "is ignored)"
    name = objective_name(spec.name, training.cpo_alpha)
    return (
        f"objective: {name} = {total}; Δ = r(chosen) − r(rejected), {reward}; {', '.join(values)}"
    )


def simpo_notice(training: Any) -> str | None:
    """The one-line notice for `loss_type: simpo` with `cpo_alpha > 0` (TRL's default
    `cpo_alpha` is 1.0, so a recipe asking for SimPO trains CPO-SimPO unless it sets 0)."""
    if training.loss_type != "simpo" or float(training.cpo_alpha) == 0:
        return None
    return (
        f"notice: loss_type simpo with cpo_alpha={_number(training.cpo_alpha)} trains CPO-SimPO "
        "(SimPO plus the behaviour-cloning NLL term), not plain SimPO; set "
        "training.cpo_alpha=0 for SimPO as in its paper"
    )
