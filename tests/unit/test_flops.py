"""Model FLOPs of the work a preference loss needs, worked out by hand, and the MFU report."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from cpo_cli.engine.flops import PairWork, flops_model, pair_work, peak_flops


def test_flops_model_by_hand() -> None:
    config = SimpleNamespace(
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=16,
        hidden_act="silu",
    )
    fm = flops_model(config, vocab_size=10)
    # per layer: q 8x8, k and v 8x4 each, o 8x8 = 192; MLP 3 x 8 x 16 = 384; head 8 x 10
    assert fm.layer_per_token == 6 * 2 * (192 + 384)
    assert fm.head_per_token == 6 * 80
    assert fm.attention_per_product == 12 * 2 * 8
    # prompt 3, chosen 2, rejected 1: six distinct tokens through the layers, the head at the
    # three answer positions; attention: the prompt's 1+2+3 products, chosen's 4+5, rejected's 4
    work = pair_work(3, 2, 1)
    assert work == PairWork(layer_tokens=6, head_tokens=3, attention_products=6 + 9 + 4)
    assert fm.step_flops(work) == 6 * 2 * 576 * 6 + 6 * 80 * 3 + 192 * 19
    assert pair_work(3, 2, 1) + pair_work(0, 1, 1) == PairWork(8, 5, 21)


def test_needed_work_is_below_plain_rows() -> None:
    """Prefix sharing is counted as saved work: a pair needs less than its two plain rows."""
    p, c, r = 400, 40, 40
    work = pair_work(p, c, r)
    plain_products = (p + c) * (p + c + 1) // 2 + (p + r) * (p + r + 1) // 2
    assert work.layer_tokens < 2 * p + c + r
    assert work.attention_products < plain_products


def test_peak_from_environment_or_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pytest.TempPathFactory
) -> None:
    monkeypatch.setenv("CPO_CACHE", str(tmp_path))
    monkeypatch.delenv("CPO_PEAK_FLOPS", raising=False)
    assert peak_flops("cpu", "fp32") is None
    (tmp_path / "matmul_peak.json").write_text('{"cpu": {"fp32": 1.5e11}}')  # type: ignore[operator]
    assert peak_flops("cpu", "fp32") == 1.5e11
    assert peak_flops("cpu", "bf16") is None
    monkeypatch.setenv("CPO_PEAK_FLOPS", "2e12")
    assert peak_flops("cuda", "bf16") == 2e12


def test_step_flops_report(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    from support import tiny_causal_lm

    from cpo_cli.engine.flops import StepFlops

    monkeypatch.setenv("CPO_PEAK_FLOPS", "1e9")
    meter = StepFlops(tiny_causal_lm("llama"), "cpu", "fp32")
    assert meter.model is not None
    meter.add({"layer_tokens": 100, "head_tokens": 40, "attention_products": 5000})
    expected = meter.model.step_flops(PairWork(100, 40, 5000))
    report = meter.report(2.0)
    assert report["tflops/s"] == pytest.approx(expected / 2.0 / 1e12, abs=1e-4)
    assert report["mfu"] == pytest.approx(expected / 2.0 / 1e9, abs=1e-4)
    assert meter.flops == 0.0
