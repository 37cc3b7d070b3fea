"""On a CUDA device (skipped elsewhere; `benchmarks/device_check.sh` runs it): every layout the
engine can pick — `packed` under sdpa, `flat` and `varlen` under flex_attention (FlexAttention's
backward exists only on GPUs), `varlen` under flash_attention_2 when flash-attn is installed —
gives plain rows' log-probs and gradients.

Tolerances: fp32, 1e-4 relative on log-probs and gradients (GPU kernels differ between
layouts more than the CPU's); bf16 weights, 3e-2 relative on the summed log-probs against the
fp32 plain-row reference (bf16 carries 8 bits of mantissa)."""

from __future__ import annotations

import importlib.util

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

from cpo_cli.data.collate import collate_pairs  # noqa: E402
from cpo_cli.engine.forward import sequence_logps  # noqa: E402
from cpo_cli.engine.layout_probe import choose_layout  # noqa: E402

CASES = [("sdpa", "packed"), ("flex_attention", "flat"), ("flex_attention", "varlen")]
if importlib.util.find_spec("flash_attn") is not None:
    CASES.append(("flash_attention_2", "varlen"))


def _model(arch: str, attn: str, dtype: torch.dtype):  # type: ignore[no-untyped-def]
    from support import tiny_causal_lm

    model = tiny_causal_lm(arch, attn="sdpa")
    if attn != "sdpa":
        model.set_attn_implementation(attn)
    return model.to("cuda", dtype)


def _rows():  # type: ignore[no-untyped-def]
    from tests.unit.test_forward import random_rows

    return random_rows(4)


def _run(model, layout: str):  # type: ignore[no-untyped-def]
    batch = collate_pairs(_rows(), pad_token_id=0, layout=layout, pad_to_multiple_of=8)  # type: ignore[arg-type]
    batch = {k: v.cuda() for k, v in batch.items()}
    model.zero_grad()
    out = sequence_logps(model, batch, chunk_size=8)
    (out.logps * torch.linspace(0.5, 1.5, out.logps.numel(), device="cuda")).sum().backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logps.detach().float(), grads


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize(("attn", "layout"), CASES)
def test_layout_matches_plain_rows_fp32(arch: str, attn: str, layout: str) -> None:
    ref_logps, ref_grads = _run(_model(arch, "sdpa", torch.float32), "pair_rows")
    model = _model(arch, attn, torch.float32)
    if layout != "varlen" or attn != "flex_attention":
        assert choose_layout(model) == layout
    logps, grads = _run(model, layout)
    torch.testing.assert_close(logps, ref_logps, rtol=1e-4, atol=1e-4)
    for name, want in ref_grads.items():
        atol = 1e-4 * float(want.abs().max()) + 1e-7
        torch.testing.assert_close(grads[name], want, rtol=1e-3, atol=atol, msg=name)


@pytest.mark.parametrize(("attn", "layout"), CASES)
def test_layout_bf16_close_to_fp32(attn: str, layout: str) -> None:
    ref_logps, _ = _run(_model("llama", "sdpa", torch.float32), "pair_rows")
    logps, grads = _run(_model("llama", attn, torch.bfloat16), layout)
    torch.testing.assert_close(logps, ref_logps, rtol=3e-2, atol=3e-2)
    assert all(torch.isfinite(g).all() for g in grads.values())
