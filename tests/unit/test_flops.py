"""Model FLOPs (6·N + causal attention) worked out by hand, and the MFU report."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from cpo_cli.engine.flops import flops_model, peak_flops, plain_sequence_sizes


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
    n = 2 * (192 + 384) + 80
    assert fm.dense_per_token == 6 * n
    assert fm.attention_per_sq_token == 6 * 2 * 8
    tokens, sum_sq = plain_sequence_sizes(3, 2, 1)  # sequences of 5 and 4 tokens
    assert (tokens, sum_sq) == (9, 25 + 16)
    assert fm.step_flops(tokens, sum_sq) == 6 * n * 9 + 96 * 41


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
    from cpo_cli.engine.flops import StepFlops
    from tests.unit.test_forward import tiny_causal_lm

    monkeypatch.setenv("CPO_PEAK_FLOPS", "1e9")
    meter = StepFlops(tiny_causal_lm("llama"), "cpu", "fp32")
    assert meter.model is not None
    meter.add({"plain_tokens": 100, "sum_sq": 5000})
    expected = meter.model.step_flops(100, 5000)
    report = meter.report(2.0)
    assert report["tflops/s"] == pytest.approx(expected / 2.0 / 1e12, abs=1e-4)
    assert report["mfu"] == pytest.approx(expected / 2.0 / 1e9, abs=1e-4)
    assert meter.flops == 0.0
