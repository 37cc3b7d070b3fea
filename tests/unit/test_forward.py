"""The log-prob forward: packed == plain rows == full-logits reference, for values and gradients."""

from __future__ import annotations

import os
from typing import Any

import pytest
from support import TINY_VOCAB, make_training, tiny_causal_lm

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from cpo_cli.data.collate import collate_pairs  # noqa: E402
from cpo_cli.engine import layout_probe  # noqa: E402
from cpo_cli.engine.forward import sequence_logps  # noqa: E402
from cpo_cli.engine.layout_probe import choose_layout, model_support  # noqa: E402
from cpo_cli.engine.model_run import packed_attention_mask  # noqa: E402
from cpo_cli.engine.objective import batch_loss_and_metrics  # noqa: E402
from cpo_cli.losses.registry import LOSS_NAMES  # noqa: E402
from cpo_cli.metric_names import PAIR_METRICS  # noqa: E402
from cpo_cli.recipe import TrainingConfig  # noqa: E402

VOCAB = TINY_VOCAB  # random_rows draws ids below the tiny model's vocabulary


def random_rows(n: int = 3, seed: int = 1) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(seed)
    lens = [(5, 3, 6), (2, 7, 1), (8, 2, 2), (1, 4, 4)][:n]

    def ids(k: int) -> list[int]:
        return torch.randint(1, VOCAB, (k,), generator=g).tolist()

    return [
        {"prompt_input_ids": ids(p), "chosen_input_ids": ids(c), "rejected_input_ids": ids(r)}
        for p, c, r in lens
    ]


def reference_logps(model, rows) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """TRL's way: full [2B, T, V] logits on plain rows, shifted, summed over answer labels."""
    b = collate_pairs(rows, pad_token_id=0, layout="pair_rows")
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
    labels = torch.full_like(b["input_ids"], -100)
    labels[b["target_rows"], b["target_cols"] + 1] = b["target_ids"]
    labels, logits = labels[:, 1:], logits[:, :-1]
    mask = labels != -100
    per_token = logits.log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    return (per_token * mask).sum(-1)


def training(loss_type: str, **kw: float) -> TrainingConfig:
    return make_training(loss_type=loss_type, **kw)


def test_packed_attention_mask_by_hand() -> None:
    # one row: prompt(2) chosen(1) rejected(2) pad(1)
    seg = torch.tensor([[0, 0, 1, 2, 2, -1]])
    allowed = (packed_attention_mask(seg, torch.float32)[0, 0] == 0).int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0],  # prompt sees prompt, causally
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],  # chosen sees prompt + itself
        [1, 1, 0, 1, 0, 0],  # rejected sees prompt + rejected, never chosen
        [1, 1, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],  # padding sees only itself (no empty softmax row)
    ]
    pos = torch.tensor([[0, 1, 2, 2, 3, 0]])
    windowed = packed_attention_mask(seg, torch.float32, position_ids=pos, sliding_window=2)
    # rejected at position 3 no longer sees the prompt token at position 1... nor 0
    assert (windowed[0, 0, 4] == 0).int().tolist() == [0, 0, 0, 1, 1, 0]


@pytest.mark.parametrize(
    ("arch", "attn"), [("llama", "sdpa"), ("qwen2", "sdpa"), ("llama", "eager"), ("qwen2", "eager")]
)
def test_both_layouts_equal_full_logits_reference(arch: str, attn: str) -> None:
    model = tiny_causal_lm(arch, attn)
    rows = random_rows(4)
    support = model_support(model)
    assert support.head_ok and support.packed_ok, support.reason
    ref = reference_logps(model, rows)
    for layout in ("packed", "pair_rows"):
        for chunk in (1024, 5):  # one chunk, and several chunks with recompute
            out = sequence_logps(
                model, collate_pairs(rows, pad_token_id=0, layout=layout), chunk_size=chunk
            )
            torch.testing.assert_close(out.logps, ref, rtol=1e-5, atol=1e-5)


def grads(model) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_grads_close(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Elementwise, with float32 rounding measured against the tensor's largest entry."""
    assert got.keys() == expected.keys() and len(expected) > 0
    for name, want in expected.items():
        atol = 1e-5 * float(want.abs().max()) + 1e-8
        torch.testing.assert_close(got[name], want, rtol=1e-4, atol=atol, msg=name)


@pytest.mark.parametrize("loss_type", LOSS_NAMES)
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_packed_and_pair_rows_same_loss_metrics_and_gradients(loss_type: str, arch: str) -> None:
    model = tiny_causal_lm(arch)
    rows = random_rows(3)
    cfg = training(
        loss_type,
        label_smoothing=0.1 if loss_type in ("sigmoid", "simpo") else 0.0,
        alpha=0.3 if loss_type == "alphapo" else 0.0,
        logprob_chunk_size=4,
    )
    results = {}
    for layout in ("packed", "pair_rows"):
        model.zero_grad()
        loss, metrics = batch_loss_and_metrics(
            model, collate_pairs(rows, pad_token_id=0, layout=layout), cfg
        )
        loss.backward()
        results[layout] = (loss.detach(), metrics, grads(model))
    (l1, m1, g1), (l2, m2, g2) = results["packed"], results["pair_rows"]
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-6)
    assert set(m1) == set(PAIR_METRICS)
    for name in PAIR_METRICS:
        assert m1[name].requires_grad is False
        torch.testing.assert_close(m1[name], m2[name], rtol=1e-5, atol=1e-6, msg=name)
    assert_grads_close(g1, g2)


def test_chunked_gradients_equal_full_logits_gradients() -> None:
    model = tiny_causal_lm("llama")
    rows = random_rows(3)
    ref = reference_logps(model, rows)
    (ref * torch.linspace(0.5, 1.5, ref.numel())).sum().backward()
    expected = grads(model)
    model.zero_grad()
    out = sequence_logps(model, collate_pairs(rows, pad_token_id=0, layout="packed"), chunk_size=3)
    (out.logps * torch.linspace(0.5, 1.5, ref.numel())).sum().backward()
    assert_grads_close(grads(model), expected)


def test_mean_logits_are_over_answer_predicting_positions() -> None:
    model = tiny_causal_lm("qwen2")
    rows = random_rows(3)
    b = collate_pairs(rows, pad_token_id=0, layout="pair_rows")
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        at = logits[b["target_rows"], b["target_cols"]]  # [N, V]
        is_chosen = b["target_seqs"] < len(rows)
        out = sequence_logps(model, collate_pairs(rows, pad_token_id=0), chunk_size=4)
    chosen, rejected = out.mean_logits()
    torch.testing.assert_close(chosen, at[is_chosen].mean(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(rejected, at[~is_chosen].mean(), rtol=1e-5, atol=1e-7)
    assert out.token_counts.tolist() == [3, 7, 2, 6, 1, 2]


class MaskIgnoringLlama(transformers.LlamaForCausalLM):
    """An architecture that silently replaces any custom mask by plain causal attention."""

    def forward(self, *args, attention_mask=None, position_ids=None, **kwargs):  # type: ignore[no-untyped-def]
        if attention_mask is not None and attention_mask.dim() == 4:
            attention_mask = None
        return super().forward(
            *args, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        )


def test_probe_detects_a_model_that_ignores_the_4d_mask(capsys: pytest.CaptureFixture[str]) -> None:
    good = tiny_causal_lm("llama", init=0.5)
    bad = MaskIgnoringLlama(good.config)
    bad.load_state_dict(good.state_dict())
    support = model_support(bad)
    assert support.head_ok and not support.packed_ok
    assert "4D attention mask" in support.reason
    assert choose_layout(bad, prefix_sharing=True) == "pair_rows"
    assert "prefix sharing is off" in capsys.readouterr().err
    assert choose_layout(bad, prefix_sharing=True) == "pair_rows"
    assert capsys.readouterr().err == ""  # said once per model
    assert choose_layout(good, prefix_sharing=True) == "packed"
    assert choose_layout(good, prefix_sharing=False) == "pair_rows"


def _bf16_prepared(model: Any) -> Any:
    """The model as `accelerate` prepares it for `training.bf16: true`: an fp32 module whose
    forward runs under bf16 autocast."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()
    try:
        return Accelerator(mixed_precision="bf16", cpu=True).prepare(model)
    finally:
        AcceleratorState._reset_state()
        GradientState._reset_state()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_probe_keeps_prefix_sharing_under_bf16_mixed_precision(arch: str) -> None:
    """bf16 autocast rounds the packed and plain layouts differently: the probe must judge
    them at half-precision tolerance, or every bf16 run (the usual GPU setting) loses prefix
    sharing and the chunked head. A model that ignores the mask is still caught."""
    model = _bf16_prepared(tiny_causal_lm(arch, init=0.5))
    support = model_support(model)
    assert support.head_ok and support.layout == "packed", support.reason
    rows = random_rows(3)
    packed = sequence_logps(model, collate_pairs(rows, pad_token_id=0), chunk_size=8)
    plain = sequence_logps(
        model, collate_pairs(rows, pad_token_id=0, layout="pair_rows"), chunk_size=8
    )
    scale = float(plain.logps.abs().max())
    torch.testing.assert_close(packed.logps, plain.logps, rtol=2e-2, atol=2e-2 * scale)

    good = tiny_causal_lm("llama", init=0.5)
    bad = MaskIgnoringLlama(good.config)
    bad.load_state_dict(good.state_dict())
    assert not model_support(_bf16_prepared(bad)).packed_ok


def test_mixed_attention_types_fall_back() -> None:
    model = tiny_causal_lm("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=1)
    support = model_support(model)
    assert not support.packed_ok and "mixes attention types" in support.reason
    rows = random_rows(3)
    out = sequence_logps(
        model, collate_pairs(rows, pad_token_id=0, layout="pair_rows"), chunk_size=8
    )
    torch.testing.assert_close(out.logps, reference_logps(model, rows), rtol=1e-5, atol=1e-5)


def test_softcapped_head_matches_model_logits() -> None:
    torch.manual_seed(0)
    cfg = transformers.Gemma2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        final_logit_softcapping=3.0,
        initializer_range=0.5,
        attn_implementation="eager",
    )
    model = transformers.Gemma2ForCausalLM(cfg).float()
    assert model_support(model).head_ok
    rows = random_rows(3)
    out = sequence_logps(
        model, collate_pairs(rows, pad_token_id=0, layout="pair_rows"), chunk_size=4
    )
    torch.testing.assert_close(out.logps, reference_logps(model, rows), rtol=1e-5, atol=1e-5)


def test_encoder_decoder_logps() -> None:
    torch.manual_seed(0)
    cfg = transformers.T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
        pad_token_id=0,
    )
    model = transformers.T5ForConditionalGeneration(cfg)
    model.eval()
    rows = random_rows(3)
    b = collate_pairs(
        rows, pad_token_id=0, layout="pair_rows", is_encoder_decoder=True, decoder_start_token_id=0
    )
    assert choose_layout(model) == "pair_rows"
    out = sequence_logps(model, b, chunk_size=4)
    # reference: the model's own loss on each row, times its token count
    for seq in range(6):
        labels = b["decoder_input_ids"].new_full((1, b["decoder_input_ids"].shape[1]), -100)
        n = int(out.token_counts[seq])
        labels[0, :n] = b["target_ids"][b["target_seqs"] == seq]
        ref = model(
            input_ids=b["input_ids"][seq : seq + 1],
            attention_mask=b["attention_mask"][seq : seq + 1],
            labels=labels,
        ).loss
        torch.testing.assert_close(out.logps[seq], -ref * n, rtol=1e-5, atol=1e-5)
    loss, metrics = batch_loss_and_metrics(model, b, training("sigmoid"))
    assert torch.isfinite(loss) and set(metrics) == set(PAIR_METRICS)


def test_probe_restores_training_mode() -> None:
    model = tiny_causal_lm("llama")
    model.train()
    layout_probe._SUPPORT.pop(model, None)
    model_support(model)
    assert model.training


def test_lora_and_gradient_checkpointing_layouts_agree() -> None:
    peft = pytest.importorskip("peft")
    model = tiny_causal_lm("llama")
    model.gradient_checkpointing_enable()
    model = peft.get_peft_model(
        model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    model.train()
    rows = random_rows(3)
    assert choose_layout(model) == "packed"
    results = []
    for layout in ("packed", "pair_rows"):
        model.zero_grad()
        out = sequence_logps(
            model, collate_pairs(rows, pad_token_id=0, layout=layout), chunk_size=4
        )
        out.logps.sum().backward()
        results.append((out.logps.detach(), grads(model)))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    assert all("lora_" in name for name in results[0][1])  # only the adapters train
    assert_grads_close(results[0][1], results[1][1])


def test_moe_router_loss_is_added_on_plain_rows() -> None:
    torch.manual_seed(0)
    cfg = transformers.MixtralConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        output_router_logits=True,
        router_aux_loss_coef=0.05,
    )
    model = transformers.MixtralForCausalLM(cfg).float()
    support = model_support(model)
    assert not support.packed_ok and "router" in support.reason
    rows = random_rows(3)
    b = collate_pairs(rows, pad_token_id=0, layout="pair_rows")
    out = sequence_logps(model, b, chunk_size=4)
    expected_aux = model(
        input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_router_logits=True
    ).aux_loss
    torch.testing.assert_close(out.aux_loss, expected_aux)
    cfg_no_nll = training("sigmoid", cpo_alpha=0.0)
    loss, _ = batch_loss_and_metrics(model, b, cfg_no_nll)
    from cpo_cli.losses.sigmoid import sigmoid_loss

    pair = sigmoid_loss(out.logps[:3], out.logps[3:], beta=0.1).mean()
    torch.testing.assert_close(loss, pair + 0.05 * expected_aux, rtol=1e-5, atol=1e-6)


def test_sliding_window_model_packs_with_the_window_in_the_mask() -> None:
    torch.manual_seed(0)
    cfg = transformers.MistralConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=4,
        initializer_range=0.5,
        attn_implementation="eager",
    )
    model = transformers.MistralForCausalLM(cfg).float()
    assert choose_layout(model) == "packed"
    rows = random_rows(4)  # rows up to 16 tokens: the 4-token window matters
    ref = reference_logps(model, rows)
    packed = sequence_logps(model, collate_pairs(rows, pad_token_id=0), chunk_size=8)
    torch.testing.assert_close(packed.logps, ref, rtol=1e-5, atol=1e-5)
    unwindowed = transformers.MistralForCausalLM(
        transformers.MistralConfig(**{**cfg.to_dict(), "sliding_window": None})
    ).float()
    unwindowed.load_state_dict(model.state_dict())
    assert not torch.allclose(reference_logps(unwindowed, rows), ref, rtol=1e-3)


class ScaledLogitsLlama(transformers.LlamaForCausalLM):
    """Logits that are not the head applied to the last hidden state (like Cohere's scale)."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):  # type: ignore[no-untyped-def]
        out = super().forward(input_ids, attention_mask, position_ids, **kwargs)
        out.logits = out.logits * 2.0
        return out


def test_unreproducible_head_falls_back_to_model_logits(capsys: pytest.CaptureFixture[str]) -> None:
    base = tiny_causal_lm("llama")
    model = ScaledLogitsLlama(base.config)
    model.load_state_dict(base.state_dict())
    support = model_support(model)
    assert not support.head_ok and support.packed_ok
    assert "full logits" in capsys.readouterr().err
    rows = random_rows(3)
    for layout in ("packed", "pair_rows"):
        out = sequence_logps(
            model, collate_pairs(rows, pad_token_id=0, layout=layout), chunk_size=4
        )
        torch.testing.assert_close(out.logps, reference_logps(model, rows), rtol=1e-5, atol=1e-5)


def test_the_lm_head_runs_in_the_recipes_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """`training.logprob_chunk_size` (schema default 256) is the chunk the head runs in; the
    forward has no default of its own that could drift from the schema."""
    import inspect

    from cpo_cli.engine import chunked_head

    param = inspect.signature(sequence_logps).parameters["chunk_size"]
    assert param.default is inspect.Parameter.empty
    model = tiny_causal_lm()
    model_support(model)  # the probe runs its own small chunks once; not counted
    seen: list[int] = []
    real = chunked_head.token_logps_and_logit_sums

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(args[4])
        return real(*args, **kwargs)

    monkeypatch.setattr(chunked_head, "token_logps_and_logit_sums", spy)
    batch = collate_pairs(random_rows(), pad_token_id=0, layout="pair_rows")
    batch_loss_and_metrics(model, batch, make_training())
    batch_loss_and_metrics(model, batch, make_training(logprob_chunk_size=5))
    assert seen == [256, 5]
