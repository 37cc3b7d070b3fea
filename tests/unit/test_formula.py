"""The objective line printed at the start of `cpo train`, for every loss in the registry."""

from __future__ import annotations

import pytest

from cpo_cli.losses.formula import describe_objective, objective_name, simpo_notice
from cpo_cli.losses.registry import LOSS_NAMES, effective_cpo_alpha
from cpo_cli.recipe.training import TrainingConfig


def _training(**fields: object) -> TrainingConfig:
    return TrainingConfig(**fields)  # type: ignore[arg-type]


def test_quickstart_objective_is_cpo_on_summed_logps() -> None:
    line = describe_objective(_training(loss_type="sigmoid", beta=0.1, cpo_alpha=1.0))
    assert line == (
        "objective: CPO = mean over pairs of −logσ(β·Δ) + cpo_alpha·NLL(chosen); "
        "Δ = r(chosen) − r(rejected), r = log-prob of the answer summed over its tokens; "
        "β=0.1, ε=0, α=0, cpo_alpha=1"
    )


def test_label_smoothing_gamma_and_averaged_logps() -> None:
    line = describe_objective(
        _training(loss_type="simpo", beta=2.0, simpo_gamma=0.5, label_smoothing=0.1, cpo_alpha=0)
    )
    assert line.startswith("objective: SimPO = mean over pairs of ")
    assert "−(1−ε)·logσ(β·Δ − γ) − ε·logσ(−(β·Δ − γ))" in line
    assert "NLL" not in line
    assert "averaged over its tokens" in line
    assert line.endswith("β=2, γ=0.5, ε=0.1, α=0, cpo_alpha=0")


def test_alphapo_reward_shape_and_its_missing_nll_term() -> None:
    line = describe_objective(_training(loss_type="alphapo", alpha=0.25, cpo_alpha=1.0))
    assert line.startswith("objective: AlphaPO = mean over pairs of −logσ(β·Δ − γ);")
    assert "r = (1 − exp(−α·logp))/α, logp = log-prob of the answer averaged" in line
    assert "α=0.25" in line
    assert "cpo_alpha=0 (alphapo has no NLL term; the recipe's 1 is ignored)" in line


@pytest.mark.parametrize(
    ("loss_type", "cpo_alpha", "name", "formula"),
    [
        ("sigmoid", 0.0, "sigmoid", "−logσ(β·Δ)"),
        ("hinge", 1.0, "hinge + NLL", "relu(1 − β·Δ)"),
        ("ipo", 0.0, "IPO", "(Δ − 1/(2β))²"),
        ("simpo", 1.0, "CPO-SimPO", "−logσ(β·Δ − γ)"),
    ],
)
def test_every_loss_names_its_formula(
    loss_type: str, cpo_alpha: float, name: str, formula: str
) -> None:
    line = describe_objective(_training(loss_type=loss_type, cpo_alpha=cpo_alpha))
    assert line.startswith(f"objective: {name} = mean over pairs of {formula}")
    assert objective_name(loss_type, cpo_alpha) == name


def test_every_registered_loss_has_a_line() -> None:
    for loss_type in LOSS_NAMES:
        assert describe_objective(_training(loss_type=loss_type)).startswith("objective: ")


def test_simpo_with_cpo_alpha_gets_the_cpo_simpo_notice() -> None:
    notice = simpo_notice(_training(loss_type="simpo", cpo_alpha=1.0))
    assert notice is not None and "trains CPO-SimPO" in notice and "cpo_alpha=0" in notice
    assert simpo_notice(_training(loss_type="simpo", cpo_alpha=0.0)) is None
    assert simpo_notice(_training(loss_type="sigmoid", cpo_alpha=1.0)) is None


def test_effective_cpo_alpha() -> None:
    assert effective_cpo_alpha("sigmoid", 0.5) == 0.5
    assert effective_cpo_alpha("alphapo", 0.5) == 0.0
