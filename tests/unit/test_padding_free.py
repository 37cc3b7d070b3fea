"""Padding-free layouts: `flat` (every pair in one row, prefix sharing kept) and `varlen` (every
sequence in one row, positions restarting) give plain rows' log-probs, losses, metrics and
gradients; FlexAttention's BlockMask gives the same values as the dense mask."""

from __future__ import annotations

import pytest
from support import tiny_causal_lm

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from cpo_cli.data.collate import collate_pairs  # noqa: E402
from cpo_cli.engine.forward import sequence_logps  # noqa: E402
from cpo_cli.engine.layout_probe import choose_layout, model_support  # noqa: E402
from cpo_cli.engine.objective import batch_loss_and_metrics  # noqa: E402
from cpo_cli.losses.registry import LOSS_NAMES  # noqa: E402
from cpo_cli.metric_names import PAIR_METRICS  # noqa: E402
from tests.unit.test_collate import ROWS  # noqa: E402
from tests.unit.test_forward import (  # noqa: E402
    assert_grads_close,
    grads,
    random_rows,
    reference_logps,
    training,
)


def lists(batch: dict[str, torch.Tensor]) -> dict[str, list]:
    return {k: v.tolist() for k, v in batch.items()}


def test_flat_by_hand() -> None:
    b = lists(collate_pairs(ROWS, pad_token_id=0, layout="flat", pad_to_multiple_of=16))
    assert b["input_ids"] == [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 0, 0, 0]]
    assert b["position_ids"] == [[0, 1, 2, 3, 4, 3, 4, 5, 0, 1, 2, 3, 1, 0, 1, 2]]
    assert b["segment_ids"] == [[0, 0, 0, 1, 1, 2, 2, 2, 0, 1, 1, 1, 2, -1, -1, -1]]
    assert b["pair_ids"] == [[0] * 8 + [1] * 5 + [-1] * 3]
    assert b["pair_lengths"] == [8, 5]
    assert b["target_ids"] == [4, 5, 6, 7, 8, 10, 11, 12, 13]
    assert b["target_rows"] == [0] * 9
    # pair 1 starts at column 8: its prompt (col 8) predicts 10 and, for rejected, 13
    assert b["target_cols"] == [2, 3, 2, 5, 6, 8, 9, 10, 8]
    assert b["target_seqs"] == [0, 0, 2, 2, 2, 1, 1, 1, 3]


def test_varlen_by_hand() -> None:
    b = lists(collate_pairs(ROWS, pad_token_id=0, layout="varlen"))
    # chosen 0, rejected 0, chosen 1, rejected 1, each with its prompt, no padding
    assert b["input_ids"] == [[1, 2, 3, 4, 5, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 9, 13]]
    assert b["position_ids"] == [[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 0, 1]]
    assert "attention_mask" not in b
    assert b["seq_lengths"] == [5, 6, 4, 2]
    assert b["target_ids"] == [4, 5, 6, 7, 8, 10, 11, 12, 13]
    assert b["target_cols"] == [2, 3, 7, 8, 9, 11, 12, 13, 15]
    assert b["target_seqs"] == [0, 0, 2, 2, 2, 1, 1, 1, 3]


@pytest.mark.parametrize("layout", ["flat", "varlen"])
def test_padding_free_layouts_score_the_same_tokens(layout: str) -> None:
    plain = collate_pairs(random_rows(4), pad_token_id=0, layout="pair_rows")
    free = collate_pairs(random_rows(4), pad_token_id=0, layout=layout)
    for b in (plain, free):
        order = torch.sort(b["target_seqs"], stable=True).indices
        b["sorted"] = b["target_ids"][order]
    assert free["sorted"].tolist() == plain["sorted"].tolist()
    assert free["input_ids"].shape[0] == 1


@pytest.mark.parametrize("layout", ["flat", "varlen"])
@pytest.mark.parametrize("loss_type", LOSS_NAMES)
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_padding_free_same_loss_metrics_and_gradients(
    layout: str, loss_type: str, arch: str
) -> None:
    """On the CPU the masks are dense (sdpa); FlexAttention has no CPU backward."""
    model = tiny_causal_lm(arch)
    rows = random_rows(4)
    cfg = training(
        loss_type,
        label_smoothing=0.1 if loss_type in ("sigmoid", "simpo") else 0.0,
        alpha=0.3 if loss_type == "alphapo" else 0.0,
        logprob_chunk_size=4,
    )
    results = {}
    for name in (layout, "pair_rows"):
        model.zero_grad()
        batch = collate_pairs(rows, pad_token_id=0, layout=name)  # type: ignore[arg-type]
        loss, metrics = batch_loss_and_metrics(model, batch, cfg)
        loss.backward()
        results[name] = (loss.detach(), metrics, grads(model))
    (l1, m1, g1), (l2, m2, g2) = results[layout], results["pair_rows"]
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-6)
    for name in PAIR_METRICS:
        torch.testing.assert_close(m1[name], m2[name], rtol=1e-5, atol=1e-6, msg=name)
    assert_grads_close(g1, g2)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_flex_attention_block_mask_gives_plain_rows_logps(arch: str) -> None:
    """The BlockMask path, forward only (the CPU has no FlexAttention backward)."""
    model = tiny_causal_lm(arch, attn="flex_attention")
    support = model_support(model)
    assert support.head_ok and support.layout == "flat" and support.varlen_ok, support.reason
    assert choose_layout(model) == "flat"
    assert choose_layout(model, prefix_sharing=False) == "varlen"
    rows = random_rows(4)
    plain = tiny_causal_lm(arch)  # same weights under sdpa: the reference
    with torch.no_grad():
        ref = reference_logps(plain, rows)
        # our BlockMask in both prefix-sharing layouts (transformers' own flex masks for varlen
        # and padded rows gather by key index, which inductor's CPU template in torch 2.13
        # fails to compile for some lengths: not tested here)
        for layout in ("flat", "packed"):
            batch = collate_pairs(rows, pad_token_id=0, layout=layout, pad_to_multiple_of=8)  # type: ignore[arg-type]
            out = sequence_logps(model, batch, chunk_size=8)
            torch.testing.assert_close(out.logps, ref, rtol=1e-5, atol=1e-5, msg=layout)


def _mask_free_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):  # type: ignore[no-untyped-def]
    """Stands in for a flash-attention kernel: no mask, sequence boundaries from position ids
    (as flash-attention's varlen path reads them), causal inside each sequence."""
    position_ids = kwargs["position_ids"]
    starts = (position_ids == 0).long().cumsum(-1)  # which sequence each token belongs to
    t = query.shape[2]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    allowed = causal & (starts[:, :, None] == starts[:, None, :])
    rep = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=allowed[:, None], scale=scaling
    )
    return out.transpose(1, 2).contiguous(), None


def test_mask_free_kernel_gets_varlen_with_one_warning(capsys: pytest.CaptureFixture[str]) -> None:
    transformers.AttentionInterface.register("cpo_test_mask_free", _mask_free_attention)
    model = tiny_causal_lm("llama", attn="cpo_test_mask_free")
    assert choose_layout(model) == "varlen"
    err = capsys.readouterr().err
    assert "prefix sharing is off" in err and "takes no custom attention mask" in err
    assert choose_layout(model) == "varlen"
    assert capsys.readouterr().err == ""  # said once per model
    rows = random_rows(4)
    out = sequence_logps(model, collate_pairs(rows, pad_token_id=0, layout="varlen"), chunk_size=4)
    torch.testing.assert_close(out.logps, reference_logps(model, rows), rtol=1e-5, atol=1e-5)
