"""collate_pairs: both layouts worked out by hand on two small pairs."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from cpo_cli.data.collate import collate_pairs  # noqa: E402
from cpo_cli.errors import DataError  # noqa: E402

ROWS = [
    {"prompt_input_ids": [1, 2, 3], "chosen_input_ids": [4, 5], "rejected_input_ids": [6, 7, 8]},
    {"prompt_input_ids": [9], "chosen_input_ids": [10, 11, 12], "rejected_input_ids": [13]},
]


def lists(batch: dict[str, torch.Tensor]) -> dict[str, list]:
    return {k: v.tolist() for k, v in batch.items()}


def test_packed_by_hand() -> None:
    b = lists(collate_pairs(ROWS, pad_token_id=0, layout="packed"))
    assert b["input_ids"] == [[1, 2, 3, 4, 5, 6, 7, 8], [9, 10, 11, 12, 13, 0, 0, 0]]
    assert b["attention_mask"] == [[1] * 8, [1] * 5 + [0] * 3]
    # rejected positions restart at the end of the prompt: 3 (pair 0), 1 (pair 1)
    assert b["position_ids"] == [[0, 1, 2, 3, 4, 3, 4, 5], [0, 1, 2, 3, 1, 0, 0, 0]]
    assert b["segment_ids"] == [[0, 0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 1, 2, -1, -1, -1]]
    # pair 0: chosen 4,5 predicted by cols 2,3; rejected 6 by the last prompt col 2, then 5, 6
    # pair 1: chosen 10,11,12 by cols 0,1,2; rejected 13 by col 0 (the prompt)
    assert b["target_ids"] == [4, 5, 6, 7, 8, 10, 11, 12, 13]
    assert b["target_rows"] == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert b["target_cols"] == [2, 3, 2, 5, 6, 0, 1, 2, 0]
    # sequences: chosen i → i, rejected i → B + i (B = 2)
    assert b["target_seqs"] == [0, 0, 2, 2, 2, 1, 1, 1, 3]


def test_pair_rows_by_hand() -> None:
    b = lists(collate_pairs(ROWS, pad_token_id=0, layout="pair_rows"))
    assert b["input_ids"] == [
        [1, 2, 3, 4, 5, 0],
        [9, 10, 11, 12, 0, 0],
        [1, 2, 3, 6, 7, 8],
        [9, 13, 0, 0, 0, 0],
    ]
    assert b["attention_mask"][3] == [1, 1, 0, 0, 0, 0]
    assert "position_ids" not in b and "segment_ids" not in b
    assert b["target_ids"] == [4, 5, 10, 11, 12, 6, 7, 8, 13]
    assert b["target_rows"] == [0, 0, 1, 1, 1, 2, 2, 2, 3]
    assert b["target_cols"] == [2, 3, 0, 1, 2, 2, 3, 4, 0]
    assert b["target_seqs"] == b["target_rows"]


def test_layouts_score_the_same_tokens() -> None:
    packed = collate_pairs(ROWS, pad_token_id=0, layout="packed")
    rows = collate_pairs(ROWS, pad_token_id=0, layout="pair_rows")
    for b in (packed, rows):
        order = torch.sort(b["target_seqs"], stable=True).indices
        b["sorted"] = b["target_ids"][order]
    assert packed["sorted"].tolist() == rows["sorted"].tolist()
    # predicted tokens are read from the same token the predictor position holds in each layout
    for b in (packed, rows):
        prev = b["input_ids"][b["target_rows"], b["target_cols"]]
        assert prev.shape == b["target_ids"].shape


def test_pad_to_multiple_of() -> None:
    b = collate_pairs(ROWS, pad_token_id=7, layout="packed", pad_to_multiple_of=4)
    assert b["input_ids"].shape == (2, 8)
    b = collate_pairs(ROWS, pad_token_id=7, layout="pair_rows", pad_to_multiple_of=4)
    assert b["input_ids"].shape == (4, 8)
    assert b["input_ids"][0, 5:].tolist() == [7, 7, 7]


def test_encoder_decoder_by_hand() -> None:
    b = lists(
        collate_pairs(
            ROWS,
            pad_token_id=0,
            layout="pair_rows",
            is_encoder_decoder=True,
            decoder_start_token_id=99,
        )
    )
    assert b["input_ids"] == [[1, 2, 3], [9, 0, 0], [1, 2, 3], [9, 0, 0]]
    # labels = answers; decoder input = labels shifted right, starting with the start token
    assert b["decoder_input_ids"] == [[99, 4, 5], [99, 10, 11], [99, 6, 7], [99, 13, 0]]
    assert b["decoder_attention_mask"] == [[1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 0, 0]]
    assert b["target_ids"] == [4, 5, 10, 11, 12, 6, 7, 8, 13]
    assert b["target_cols"] == [0, 1, 0, 1, 2, 0, 1, 2, 0]  # no shift: position j predicts j
    assert b["target_seqs"] == [0, 0, 1, 1, 1, 2, 2, 2, 3]


def test_empty_prompt_first_answer_token_is_not_scored() -> None:
    rows = [{"prompt_input_ids": [], "chosen_input_ids": [4, 5], "rejected_input_ids": [6]}]
    for layout in ("packed", "pair_rows"):
        b = collate_pairs(rows, pad_token_id=0, layout=layout)  # type: ignore[arg-type]
        assert b["target_ids"].tolist() == [5]  # as TRL: the token at column 0 has no predictor


def test_tensor_rows_and_errors() -> None:
    rows = [{k: torch.tensor(v) for k, v in ROWS[0].items()}]
    assert collate_pairs(rows, pad_token_id=0)["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 8]]
    with pytest.raises(DataError, match="prompt_input_ids"):
        collate_pairs([{"chosen_input_ids": [1], "rejected_input_ids": [2]}], pad_token_id=0)
    with pytest.raises(DataError, match="empty `rejected_input_ids`"):
        collate_pairs(
            [{"prompt_input_ids": [1], "chosen_input_ids": [1], "rejected_input_ids": []}],
            pad_token_id=0,
        )
    with pytest.raises(DataError, match="decoder_start_token_id"):
        collate_pairs(ROWS, pad_token_id=0, layout="pair_rows", is_encoder_decoder=True)
