"""MetricMeans: pair-weighted means, the NaN/inf filter, and no host sync while adding."""

from __future__ import annotations

import math

import pytest
import torch

from cpo_cli.engine.metric_means import MetricMeans


def test_weighted_means_of_tensors_and_floats() -> None:
    means = MetricMeans()
    means.add({"loss": torch.tensor(1.0), "acc": 0.5}, weight=2.0)
    means.add({"loss": torch.tensor(4.0), "acc": 1.0}, weight=1.0)
    out = means.means()
    assert out["loss"] == pytest.approx((2 * 1.0 + 4.0) / 3)
    assert out["acc"] == pytest.approx((2 * 0.5 + 1.0) / 3)


def test_keep_false_drops_the_whole_batch_even_when_it_is_nan() -> None:
    means = MetricMeans()
    means.add({"loss": torch.tensor(2.0)}, weight=3.0, keep=torch.tensor(True))
    means.add({"loss": torch.tensor(math.nan)}, weight=5.0, keep=torch.tensor(False))
    means.add({"loss": torch.tensor(math.inf)}, weight=5.0, keep=torch.tensor(False))
    assert means.means() == {"loss": pytest.approx(2.0)}


def test_only_dropped_batches_give_no_means() -> None:
    means = MetricMeans()
    means.add({"loss": torch.tensor(math.nan)}, weight=1.0, keep=torch.tensor(False))
    assert means.means() == {}


def test_without_filter_a_nan_reaches_the_mean() -> None:
    means = MetricMeans()
    means.add({"loss": torch.tensor(math.nan)}, weight=1.0)
    assert math.isnan(means.means()["loss"])


def test_adding_never_reads_a_tensor_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU each `.item()` waits for the device; the per-micro-batch path must not call it."""
    means = MetricMeans()

    def no_sync(*_a: object, **_k: object) -> None:
        raise AssertionError("MetricMeans.add read a tensor back to the host")

    monkeypatch.setattr(torch.Tensor, "item", no_sync)
    monkeypatch.setattr(torch.Tensor, "tolist", no_sync)
    monkeypatch.setattr(torch.Tensor, "__float__", no_sync)
    monkeypatch.setattr(torch.Tensor, "__bool__", no_sync)
    for value in (1.0, 2.0):
        loss = torch.tensor(value)
        means.add({"loss": loss, "acc": torch.tensor(0.5)}, 4.0, keep=torch.isfinite(loss))
    monkeypatch.undo()
    assert means.means()["loss"] == pytest.approx(1.5)


def test_reset_clears() -> None:
    means = MetricMeans()
    means.add({"loss": torch.tensor(1.0)}, weight=1.0)
    means.reset()
    assert means.means() == {}
