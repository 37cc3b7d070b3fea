"""Each loss against values worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from cpo_cli.losses.alphapo import alphapo_reward  # noqa: E402
from cpo_cli.losses.hinge import hinge_loss  # noqa: E402
from cpo_cli.losses.ipo import ipo_loss  # noqa: E402
from cpo_cli.losses.registry import LOSSES, get_loss_fn  # noqa: E402
from cpo_cli.losses.sigmoid import sigmoid_loss  # noqa: E402
from cpo_cli.losses.simpo import simpo_loss  # noqa: E402
from cpo_cli.losses.total import chosen_nll, total_loss  # noqa: E402

# -logσ(1) = log(1 + e^-1)
NEG_LOGSIG_1 = math.log(1 + math.exp(-1))  # 0.31326168751822286


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def test_sigmoid_by_hand() -> None:
    # Δ = -1 - (-3) = 2, β·Δ = 0.5·2 = 1 → -logσ(1) = 0.313262
    # Δ = 0 → -logσ(0) = log 2;  Δ = -2 → -logσ(-1) = 1 + 0.313262 (since -logσ(-x) = x - logσ(x))
    out = sigmoid_loss(t(-1, -2, -5), t(-3, -2, -3), beta=0.5)
    assert out.tolist() == pytest.approx([NEG_LOGSIG_1, math.log(2), 1 + NEG_LOGSIG_1], rel=1e-12)


def test_sigmoid_label_smoothing_by_hand() -> None:
    # β·Δ = 1, ε = 0.1: 0.9·(-logσ(1)) + 0.1·(-logσ(-1)) = 0.9·a + 0.1·(1 + a) = a + 0.1
    out = sigmoid_loss(t(-1), t(-3), beta=0.5, label_smoothing=0.1)
    assert out.item() == pytest.approx(NEG_LOGSIG_1 + 0.1, rel=1e-12)
    # ε = 0.5 makes the loss symmetric: 0.5·(a + 1 + a) = a + 0.5 for Δ and -Δ alike
    sym = sigmoid_loss(t(-1, -3), t(-3, -1), beta=0.5, label_smoothing=0.5)
    assert sym.tolist() == pytest.approx([NEG_LOGSIG_1 + 0.5] * 2, rel=1e-12)


def test_hinge_by_hand() -> None:
    # β = 0.5: Δ = 1 → relu(1 - 0.5) = 0.5; Δ = 3 → relu(-0.5) = 0; Δ = -1 → relu(1.5) = 1.5
    out = hinge_loss(t(0, 0, 0), t(-1, -3, 1), beta=0.5)
    assert out.tolist() == pytest.approx([0.5, 0.0, 1.5], abs=1e-12)


def test_ipo_by_hand() -> None:
    # β = 0.25 → target gap 1/(2·0.25) = 2: Δ = 1 → (1-2)² = 1; Δ = 5 → 9; Δ = 2 → 0
    out = ipo_loss(t(-1, 0, -1), t(-2, -5, -3), beta=0.25)
    assert out.tolist() == pytest.approx([1.0, 9.0, 0.0], abs=1e-12)


def test_simpo_by_hand() -> None:
    # β = 2, γ = 1, Δ = -0.5 - (-1.5) = 1: -logσ(β·Δ - γ) = -logσ(2 - 1) = 0.313262
    out = simpo_loss(t(-0.5), t(-1.5), beta=2.0, simpo_gamma=1.0)
    assert out.item() == pytest.approx(NEG_LOGSIG_1, rel=1e-12)
    # with ε = 0.1 the same smoothing as sigmoid: a + 0.1
    smooth = simpo_loss(t(-0.5), t(-1.5), beta=2.0, simpo_gamma=1.0, label_smoothing=0.1)
    assert smooth.item() == pytest.approx(NEG_LOGSIG_1 + 0.1, rel=1e-12)
    # γ = 0 is the sigmoid loss
    assert simpo_loss(t(-1), t(-3), beta=0.5, simpo_gamma=0.0).item() == pytest.approx(
        NEG_LOGSIG_1, rel=1e-12
    )


def test_alphapo_reward_by_hand() -> None:
    # α = 0.5, logp = -1: p^-α = e^0.5 = 1.648721; r = (1 - 1.648721)/0.5 = -1.297443
    # logp = 0 → p = 1 → r = 0
    out = alphapo_reward(t(-1, 0), 0.5)
    assert out.tolist() == pytest.approx([(1 - math.exp(0.5)) / 0.5, 0.0], rel=1e-12)
    # α = -1, logp = -1: p^1 = e^-1 = 0.367879; r = (1 - 0.367879)/(-1) = -0.632121
    assert alphapo_reward(t(-1), -1.0).item() == pytest.approx(-(1 - math.exp(-1)), rel=1e-12)
    # α = 0 leaves log-probs unchanged (the very tensor)
    x = t(-4, -2)
    assert alphapo_reward(x, 0.0) is x
    # summed log-probs of long answers: TRL's exp(logp)**-α overflows to inf; ours stays finite
    assert torch.isfinite(alphapo_reward(t(-200.0).float(), -0.1)).all()


def test_alphapo_reward_is_monotone_like_logp() -> None:
    logps = torch.linspace(-5, 0, 11, dtype=torch.float64)
    for alpha in (-0.5, 0.25, 1.0):
        r = alphapo_reward(logps, alpha)
        assert (r.diff() > 0).all()


def test_chosen_nll_and_total_by_hand() -> None:
    # 4 chosen tokens with log-probs summing to -6 → NLL = 6/4 = 1.5
    nll = chosen_nll(t(-6.0), torch.tensor(4))
    assert nll.item() == pytest.approx(1.5)
    # mean([1, 3]) = 2; + 0.5·1.5 = 2.75; + 0.01·2 (router) = 2.77
    assert total_loss(t(1, 3), nll=nll, cpo_alpha=0.5).item() == pytest.approx(2.75)
    full = total_loss(t(1, 3), nll=nll, cpo_alpha=0.5, aux_loss=t(2.0), aux_loss_coef=0.01)
    assert full.item() == pytest.approx(2.77)
    # cpo_alpha = 0 drops the NLL term entirely (even a NaN one), coefficient 0 the router term
    nan = t(float("nan"))
    assert total_loss(t(1, 3), nll=nan, cpo_alpha=0.0, aux_loss=nan).item() == pytest.approx(2.0)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_registry_paths_resolve(name: str) -> None:
    fn = get_loss_fn(name)
    spec = LOSSES[name]
    kwargs = {k: 0.1 for k in spec.knobs if k != "alpha"}
    out = fn(t(-1, -2), t(-2, -1), beta=0.5, **kwargs)
    assert out.shape == (2,)
    assert torch.isfinite(out).all()
