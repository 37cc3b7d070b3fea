"""Evaluation across processes scores every held-out pair exactly once (no padding repeats)."""

from __future__ import annotations

import pytest
from support import make_training


def _rows(n: int) -> list[dict[str, list[int]]]:
    return [
        {"prompt_input_ids": [1, 10 + i], "chosen_input_ids": [5, 2], "rejected_input_ids": [6, 2]}
        for i in range(n)
    ]


@pytest.mark.parametrize(("n", "processes"), [(5, 2), (7, 3), (2, 4)])
def test_each_pair_lands_in_exactly_one_shard(n: int, processes: int) -> None:
    from datasets import Dataset

    from cpo_cli.engine.data import build_eval_dataloader

    dataset = Dataset.from_list(_rows(n))
    training = make_training(per_device_eval_batch_size=2, dataloader_pin_memory=False)
    seen: list[int] = []
    pairs = 0
    for rank in range(processes):
        loader = build_eval_dataloader(
            dataset,
            training,
            pad_token_id=0,
            is_encoder_decoder=False,
            layout="pair_rows",
            process_index=rank,
            num_processes=processes,
        )
        for batch, sizes in loader:
            pairs += sizes["pairs"]
            # the prompt's second token identifies the row; chosen rows come first
            seen.extend(int(t) for t in batch["input_ids"][: sizes["pairs"], 1])
    assert pairs == n
    assert sorted(seen) == [10 + i for i in range(n)]
