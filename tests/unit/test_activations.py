"""`mlp_activation_saving`: each mode keeps less and gives the model's own gradients."""

from __future__ import annotations

import pytest
from support import tiny_causal_lm

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from cpo_cli.data.collate import collate_pairs  # noqa: E402
from cpo_cli.engine.activations import apply_mlp_activation_saving  # noqa: E402
from cpo_cli.engine.objective import batch_loss_and_metrics  # noqa: E402
from tests.unit.test_forward import (  # noqa: E402
    assert_grads_close,
    grads,
    random_rows,
    training,
)


def _saved_bytes(model, batch) -> int:  # type: ignore[no-untyped-def]
    """Bytes of distinct non-parameter storages autograd keeps for the backward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return sum(seen.values())


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_modes_give_the_models_gradients_and_keep_less(arch: str) -> None:
    rows = random_rows(4)
    batch = collate_pairs(rows, pad_token_id=0, layout="packed")
    cfg = training("sigmoid", logprob_chunk_size=4)
    results, kept = {}, {}
    for mode in ("model", "gate_up", "input"):
        model = tiny_causal_lm(arch)
        model.train()
        assert apply_mlp_activation_saving(model, mode) == (0 if mode == "model" else 2)
        loss, _ = batch_loss_and_metrics(model, batch, cfg)
        loss.backward()
        results[mode] = (loss.detach(), grads(model))
        kept[mode] = _saved_bytes(model, batch)
    for mode in ("gate_up", "input"):
        torch.testing.assert_close(results[mode][0], results["model"][0], rtol=1e-6, atol=1e-7)
        assert_grads_close(results[mode][1], results["model"][1])
    assert kept["input"] < kept["gate_up"] < kept["model"]


def test_fused_swiglu_gradcheck() -> None:
    from cpo_cli.engine.activations import _SwiGLUDown

    g = torch.Generator().manual_seed(0)
    gate, up = (
        torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True) for _ in "ab"
    )
    weight = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: _SwiGLUDown.apply(*a), (gate, up, weight, bias))


def test_lora_down_projection_takes_the_checkpointed_path() -> None:
    peft = pytest.importorskip("peft")
    rows = random_rows(3)
    batch = collate_pairs(rows, pad_token_id=0, layout="packed")
    cfg = training("sigmoid", logprob_chunk_size=4)
    out = []
    for mode in ("model", "gate_up", "input"):
        model = tiny_causal_lm("llama")
        apply_mlp_activation_saving(model, mode)
        model = peft.get_peft_model(
            model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["down_proj", "up_proj"])
        )
        model.train()
        loss, _ = batch_loss_and_metrics(model, batch, cfg)
        loss.backward()
        out.append(grads(model))
    assert all("lora_" in name for name in out[0])
    assert_grads_close(out[1], out[0])
    assert_grads_close(out[2], out[0])


def test_an_mlp_that_is_not_swiglu_is_refused() -> None:
    from cpo_cli.errors import CpoError

    model = tiny_causal_lm("llama")
    mlp = model.model.layers[0].mlp
    original = type(mlp).forward
    mlp.forward = lambda x: original(mlp, x) * 2.0  # not down(silu(gate) * up)
    with pytest.raises(CpoError, match="mlp_activation_saving"):
        apply_mlp_activation_saving(model, "gate_up")
