"""Token-budget micro-batches and longest-first ordering, worked out by hand."""

from __future__ import annotations

import pytest

from cpo_cli.data.token_batching import batch_tokens, longest_first, token_budget_batches
from cpo_cli.errors import DataError

PAIRS = [(10, 2, 3), (4, 4, 1), (20, 5, 5), (1, 1, 1)]


def test_batch_tokens_per_layout() -> None:
    two = PAIRS[:2]  # pair lengths 15 and 9
    assert batch_tokens(two, "packed") == 2 * 15
    assert batch_tokens(two, "flat") == 15 + 9
    assert batch_tokens(two, "varlen") == (2 * 10 + 5) + (2 * 4 + 5)
    assert batch_tokens(two, "pair_rows") == 4 * 13  # 2B rows of the longest prompt + answer
    assert batch_tokens([], "flat") == 0


def test_budget_fills_batches_in_order_and_caps_pairs() -> None:
    order = [2, 0, 1, 3]  # lengths 30, 15, 9, 3 in the flat layout
    assert token_budget_batches(order, PAIRS, budget=45, max_pairs=8, layout="flat") == [
        [2, 0],
        [1, 3],
    ]
    assert token_budget_batches(order, PAIRS, budget=100, max_pairs=3, layout="flat") == [
        [2, 0, 1],
        [3],
    ]
    # packed pads to the longest row: 30 + 30 > 45
    assert token_budget_batches(order, PAIRS, budget=45, max_pairs=8, layout="packed") == [
        [2],
        [0, 1, 3],
    ]


def test_a_pair_over_the_budget_is_an_error() -> None:
    with pytest.raises(DataError, match=r"max_tokens_per_batch: pair 2 alone needs 30 tokens"):
        token_budget_batches([0, 2], PAIRS, budget=20, max_pairs=8, layout="flat")


def test_longest_first_swaps_the_costliest_batch_to_the_front() -> None:
    assert longest_first([[1], [2], [3]], [5, 9, 7]) == [[2], [1], [3]]
    assert longest_first([[1]], [5]) == [[1]]


def test_token_budget_batches_are_fixed_shuffled_per_epoch_and_longest_first() -> None:
    pytest.importorskip("torch")
    from cpo_cli.engine.data import TokenBudgetBatches

    lengths = [(5 + i % 7, 3 + i % 5, 2 + i % 3) for i in range(40)]
    sampler = TokenBudgetBatches(lengths, budget=60, max_pairs=8, layout="flat", seed=3)
    epochs = []
    for epoch in range(3):
        sampler.use_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for b in batches for i in b) == list(range(40))  # each pair once
        assert all(batch_tokens([lengths[i] for i in b], "flat") <= 60 for b in batches)
        costs = [batch_tokens([lengths[i] for i in b], "flat") for b in batches]
        assert costs[0] == max(costs)
        epochs.append(batches)
    assert sorted(map(sorted, epochs[0])) == sorted(map(sorted, epochs[1]))  # same batches
    assert epochs[1] != epochs[2]  # in another order


def test_group_by_length_puts_the_longest_pair_first() -> None:
    pytest.importorskip("torch")
    from cpo_cli.engine.data import EpochSampler

    lengths = [(i * 37) % 101 for i in range(300)]
    for epoch in range(3):
        sampler = EpochSampler(300, seed=1, lengths=lengths, batch_size=2)
        sampler.use_epoch(epoch)
        order = sampler.order()
        assert sorted(order) == list(range(300))
        assert lengths[order[0]] == max(lengths)


def test_step_windows_group_micro_batches_per_optimizer_step() -> None:
    from cpo_cli.engine.schedule import step_windows

    loader = [("a", {"pairs": 3}), ("b", {"pairs": 1}), ("c", {"pairs": 2}), ("d", {"pairs": 1})]
    got = [[b for b, _ in window] for window in step_windows(loader, 2, batches_left=3)]
    assert got == [["a", "b"], ["c"]]  # the last window of the epoch is short
