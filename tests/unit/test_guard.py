"""The NaN/Inf guard's pieces: the one host read per step, the streak that stops a run, the
weight check before any save."""

from __future__ import annotations

import math
import signal

import pytest
import torch

from cpo_cli.engine.guard import NonFiniteStreak, check_step, nonfinite_weights


@pytest.mark.parametrize(
    ("loss", "norm", "loss_finite", "grad_finite"),
    [
        (1.0, 2.0, True, True),
        (math.nan, 2.0, False, True),
        (math.inf, 2.0, False, True),
        (1.0, math.nan, True, False),
        (1.0, math.inf, True, False),
    ],
)
def test_check_step(loss: float, norm: float, loss_finite: bool, grad_finite: bool) -> None:
    check = check_step(None, torch.tensor(loss), torch.tensor(norm), received=None)
    assert (check.loss_finite, check.grad_finite, check.stop) == (loss_finite, grad_finite, False)
    if grad_finite:
        assert check.grad_norm == pytest.approx(norm)


def test_check_step_reads_the_device_once(monkeypatch: pytest.MonkeyPatch) -> None:
    reads = []
    real = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: reads.append(1) or real(t))
    for name in ("item", "__bool__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, lambda *a, n=name: pytest.fail(f"Tensor.{n}"))
    check = check_step(None, torch.tensor(0.5), torch.tensor(1.5), received=signal.SIGTERM)
    monkeypatch.undo()
    assert reads == [1] and check.stop_signal == signal.SIGTERM
    assert check.grad_norm == pytest.approx(1.5)


def test_an_unknown_grad_norm_is_not_a_bad_one() -> None:
    check = check_step(None, torch.tensor(0.5), None, received=None)
    assert check.grad_norm is None and check.grad_finite


def test_streak_counts_only_steps_in_a_row() -> None:
    streak = NonFiniteStreak(limit=3)
    for step, finite in [(1, True), (2, False), (3, False), (4, True), (5, False), (6, False)]:
        streak.update(step, finite)
        assert not streak.exhausted
    streak.update(7, False)
    assert streak.exhausted and streak.first_step == 5 and streak.length == 3


def test_nonfinite_weights_names_them() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    assert nonfinite_weights(model) == []
    with torch.no_grad():
        model[1].bias[0] = math.inf
    assert nonfinite_weights(model) == ["1.bias"]


def test_a_huge_but_finite_weight_is_not_mistaken_for_a_non_finite_one() -> None:
    model = torch.nn.Linear(1000, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(3e38)  # the float32 sum overflows; every element is finite
    assert not bool(torch.isfinite(model.weight.sum()))
    assert nonfinite_weights(model) == []
    with torch.no_grad():
        model.weight[0, 7] = math.nan
    assert nonfinite_weights(model) == ["weight"]
