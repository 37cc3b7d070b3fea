"""One optimizer step is one batch of all its pairs, however it is cut into micro-batches and
processes: each micro-batch's loss counts by its share of the step's pairs, and the NLL term
(with `average_tokens_across_devices`) by the step's chosen tokens (`StepTotals`). Checked on
real gradients of a tiny model: micro-batches of 3, 1 | 1, 2 pairs on two emulated processes,
backwards divided as accelerate (by the accumulation) and DDP (by the processes) divide them."""

from __future__ import annotations

import os

import pytest
from support import make_training, tiny_causal_lm

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from cpo_cli.data.collate import collate_pairs  # noqa: E402
from cpo_cli.engine.objective import (  # noqa: E402
    StepTotals,
    batch_loss_and_metrics,
    token_weighted_nll,
)

VOCAB = 64
#: two processes, two micro-batches each, of unequal numbers of pairs
SPLIT = [[[0, 1, 2], [3]], [[4], [5, 6]]]
ACCUMULATION, PROCESSES = 2, 2


def tiny_model():  # type: ignore[no-untyped-def]
    """A one-layer Llama, smaller than the shared tiny model."""
    return tiny_causal_lm(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )


def rows() -> list[dict[str, list[int]]]:
    """7 pairs whose chosen answers have 1 to 7 tokens (token means differ from pair means)."""
    g = torch.Generator().manual_seed(3)

    def ids(k: int) -> list[int]:
        return torch.randint(1, VOCAB, (k,), generator=g).tolist()

    return [
        {
            "prompt_input_ids": ids(2 + i % 3),
            "chosen_input_ids": ids(1 + i),
            "rejected_input_ids": ids(7 - i),
        }
        for i in range(7)
    ]


def batch(pairs: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    return collate_pairs(pairs, pad_token_id=0, layout="pair_rows")


def gradient(model, loss):  # type: ignore[no-untyped-def]
    model.zero_grad(set_to_none=True)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def accumulated(model, data, training):  # type: ignore[no-untyped-def]
    """The loop's weighting: (summed gradient as DDP leaves it, pair-weighted mean loss)."""
    groups = [[[data[i] for i in mb] for mb in window] for window in SPLIT]
    pairs = sum(len(mb) for window in groups for mb in window)
    chosen = sum(len(r["chosen_input_ids"]) for w in groups for mb in w for r in mb)
    totals = StepTotals(float(pairs), float(chosen), ACCUMULATION, PROCESSES)
    by_tokens = token_weighted_nll(training)
    grad, loss_sum = None, 0.0
    for window in groups:
        for mb in window:
            p = len(mb)
            count = totals.nll_denominator(p) if by_tokens else None
            loss, _ = batch_loss_and_metrics(model, batch(mb), training, nll_token_count=count)
            # accelerate divides the backward by the accumulation, DDP averages the processes
            g = gradient(model, loss * totals.weight(p) / (ACCUMULATION * PROCESSES))
            grad = g if grad is None else grad + g
            loss_sum += float(loss.detach()) * p
    return grad, loss_sum / pairs


@pytest.mark.parametrize("loss_type", ["sigmoid", "simpo"])
def test_unequal_micro_batches_on_two_processes_make_one_batch(loss_type: str) -> None:
    model, data = tiny_model(), rows()
    training = make_training(loss_type=loss_type, cpo_alpha=1.0, beta=0.5)
    assert training.average_tokens_across_devices  # the default
    whole, _ = batch_loss_and_metrics(model, batch(data), training)
    expected = gradient(model, whole)
    got, mean_loss = accumulated(model, data, training)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert mean_loss == pytest.approx(float(whole.detach()), rel=1e-5)  # what the log reports


def test_trl_mode_keeps_the_nll_mean_per_micro_batch() -> None:
    """`average_tokens_across_devices: false`: the preference part still counts by pairs, so
    without the NLL term the step is exact; with it the per-micro-batch token means differ
    from the step's (TRL's behaviour, kept for parity)."""
    model, data = tiny_model(), rows()
    plain = make_training(cpo_alpha=0.0, average_tokens_across_devices=False)
    whole, _ = batch_loss_and_metrics(model, batch(data), plain)
    got, _ = accumulated(model, data, plain)
    assert torch.allclose(got, gradient(model, whole), rtol=1e-5, atol=1e-7)

    trl = make_training(cpo_alpha=1.0, average_tokens_across_devices=False)
    whole, _ = batch_loss_and_metrics(model, batch(data), trl)
    got, _ = accumulated(model, data, trl)
    assert not torch.allclose(got, gradient(model, whole), rtol=1e-3, atol=1e-5)


def test_step_totals_by_hand() -> None:
    """Pairs 3, 1 | 1, 2 (P = 7) and chosen tokens 6, 1 | 2, 11 (T = 20) on 2 processes with
    accumulation 2: weights 4·p/7; NLL denominators 20·p/7. After /(2·2) the weights sum to 1,
    and Σ weight·NLL_sum/denominator/4 = Σ NLL_sum / 20."""
    totals = StepTotals(7.0, 20.0, accumulation=2, processes=2)
    pairs, nll_sums = [3, 1, 1, 2], [9.0, 2.0, 5.0, 13.0]
    assert sum(totals.weight(p) for p in pairs) / 4 == pytest.approx(1.0)
    nll_term = (
        sum(
            totals.weight(p) * s / totals.nll_denominator(p)
            for p, s in zip(pairs, nll_sums, strict=True)
        )
        / 4
    )
    assert nll_term == pytest.approx(sum(nll_sums) / 20)
    # equal micro-batches: the former 1 / (micro-batches x processes) share of each
    equal = StepTotals(8.0, 20.0, accumulation=2, processes=2)
    assert equal.weight(2) == pytest.approx(1.0)
