"""`use_liger_kernel`: refused clearly without the package or a GPU; applied through Liger's
public per-model function with its loss kernels off."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
from support import tiny_causal_lm

torch = pytest.importorskip("torch")

from cpo_cli.engine.liger import apply_liger  # noqa: E402
from cpo_cli.errors import DependencyMissingError, ModelLoadError  # noqa: E402


@pytest.fixture
def fake_liger(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    module = types.ModuleType("liger_kernel.transformers")

    def apply_liger_kernel_to_llama(
        rope: bool = True,
        cross_entropy: bool = False,
        fused_linear_cross_entropy: bool = True,
        rms_norm: bool = True,
        swiglu: bool = True,
        model: Any = None,
    ) -> None:
        calls.append(
            dict(
                rope=rope,
                cross_entropy=cross_entropy,
                rms_norm=rms_norm,
                fused_linear_cross_entropy=fused_linear_cross_entropy,
                swiglu=swiglu,
                model=model,
            )
        )

    module.apply_liger_kernel_to_llama = apply_liger_kernel_to_llama  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", module)
    return calls


def test_off_does_nothing() -> None:
    assert apply_liger(tiny_causal_lm(), False, None) is False


def test_missing_package_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", None)
    with pytest.raises(DependencyMissingError, match="use_liger_kernel: the liger-kernel package"):
        apply_liger(tiny_causal_lm(), True, None)


def test_no_gpu_is_refused(
    fake_liger: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DependencyMissingError, match="need a CUDA or ROCm GPU"):
        apply_liger(tiny_causal_lm(), True, None)
    assert fake_liger == []


def test_applied_per_model_with_its_loss_kernels_off(
    fake_liger: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    model = tiny_causal_lm("llama")
    assert apply_liger(model, True, {"rope": False, "fused_linear_cross_entropy": True}) is True
    (call,) = fake_liger
    assert call["model"] is model and call["rope"] is False
    assert call["cross_entropy"] is False and call["fused_linear_cross_entropy"] is False
    assert apply_liger(model, True, {"swiglu": False}) is False
    with pytest.raises(ModelLoadError, match="liger_kernel_config"):
        apply_liger(model, True, {"no_such_kernel": True})
    with pytest.raises(ModelLoadError, match="no kernels for model type 'qwen2'"):
        apply_liger(tiny_causal_lm("qwen2"), True, None)
