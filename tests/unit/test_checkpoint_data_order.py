"""The training order is a pure function of (data_seed, epoch): what lets a resumed run rebuild
it and skip exactly the batches already done."""

from __future__ import annotations

from cpo_cli.engine.data import MEGABATCH_FACTOR, EpochSampler


def test_order_depends_only_on_seed_and_epoch() -> None:
    a, b = EpochSampler(50, seed=7), EpochSampler(50, seed=7)
    a.use_epoch(3)
    b.use_epoch(3)
    assert a.order() == b.order() and sorted(a.order()) == list(range(50))
    b.use_epoch(4)
    assert a.order() != b.order()
    assert EpochSampler(50, seed=8).order() != EpochSampler(50, seed=7).order()


def test_accelerate_cannot_reset_the_epoch() -> None:
    """accelerate calls `set_epoch(<its iteration count>)` on samplers that have it."""
    assert not hasattr(EpochSampler(5, seed=0), "set_epoch")


def test_no_shuffle_keeps_dataset_order() -> None:
    assert list(EpochSampler(5, seed=1, shuffle=False)) == [0, 1, 2, 3, 4]


def test_group_by_length_sorts_within_megabatches() -> None:
    lengths = [(i * 37) % 101 for i in range(2 * MEGABATCH_FACTOR * 2)]
    sampler = EpochSampler(len(lengths), seed=0, lengths=lengths, batch_size=2)
    order = sampler.order()
    assert sorted(order) == list(range(len(lengths)))
    size = 2 * MEGABATCH_FACTOR
    for start in range(0, len(order), size):
        chunk = [lengths[i] for i in order[start : start + size]]
        assert chunk == sorted(chunk, reverse=True)
    # still shuffled: the megabatches hold different rows in another epoch
    sampler.use_epoch(1)
    assert set(sampler.order()[:size]) != set(order[:size])
