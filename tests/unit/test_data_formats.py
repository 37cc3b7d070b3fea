"""Format detection, column mapping and row normalisation (chat template, implicit prompt,
scored candidates), including every row problem."""

from __future__ import annotations

from typing import Any

import pytest

from cpo_cli.data.columns import parse_columns, plan_columns
from cpo_cli.data.formats import TextNormaliser, detect_format
from cpo_cli.data.problems import RowProblem
from cpo_cli.data.rows import RowOptions
from cpo_cli.errors import DataError

USER = {"role": "user", "content": "What is 2 + 2?"}
RIGHT = {"role": "assistant", "content": "4"}
WRONG = {"role": "assistant", "content": "5"}


def reason(normalise: TextNormaliser, row: dict[str, Any]) -> str:
    with pytest.raises(RowProblem) as info:
        normalise(row)
    return info.value.reason


def test_parse_columns() -> None:
    assert parse_columns("prompt=question, chosen=good,rejected=bad") == {
        "prompt": "question",
        "chosen": "good",
        "rejected": "bad",
    }
    assert parse_columns(None) == {}
    with pytest.raises(DataError, match="cannot read 'prompt'"):
        parse_columns("prompt")
    with pytest.raises(DataError, match="unknown canonical name"):
        parse_columns("answer=x")


def test_column_plan_names_missing_columns() -> None:
    plan = plan_columns(
        ["question", "good", "rejected"], {"prompt": "question", "chosen": "good"}, [], "f"
    )
    assert plan.describe() == {"prompt": "question", "chosen": "good", "rejected": "rejected"}
    with pytest.raises(DataError, match="chosen=best") as info:
        plan_columns(["question"], {"chosen": "best"}, [], "f.jsonl")
    assert "question" in (info.value.hint or "")


@pytest.mark.parametrize(
    ("columns", "row", "expected"),
    [
        (["prompt", "chosen", "rejected"], {"chosen": "a"}, "standard"),
        (["prompt", "chosen", "rejected"], {"chosen": [RIGHT]}, "conversational"),
        (["chosen", "rejected"], {"chosen": [USER, RIGHT]}, "implicit"),
        (["prompt", "candidates", "scores"], {}, "scored"),
        (["messages", "chosen", "rejected"], {"chosen": "a"}, "standard"),
    ],
)
def test_detect_format(columns: list[str], row: dict[str, Any], expected: str) -> None:
    assert detect_format(columns, [row], "f", columns) == expected


def test_detect_format_explains_unknown_columns() -> None:
    with pytest.raises(DataError, match="cannot tell") as info:
        detect_format([], [{}], "f.jsonl", ["query", "good", "bad"])
    assert "query, good, bad" in info.value.message
    assert "--columns" in (info.value.hint or "")


def test_conversational_row_uses_the_chat_template(tiny_tokenizer: Any) -> None:
    texts = TextNormaliser(tiny_tokenizer, RowOptions("auto"), "f")(
        {"prompt": [USER], "chosen": [RIGHT], "rejected": [WRONG]}
    )
    assert texts.kind == "conversational"
    assert texts.prompt == "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
    assert (texts.chosen, texts.rejected) == ("4<|im_end|>\n", "5<|im_end|>\n")


def test_implicit_prompt_is_the_shared_leading_turns(tiny_tokenizer: Any) -> None:
    system = {"role": "system", "content": "Be brief."}
    texts = TextNormaliser(tiny_tokenizer, RowOptions("auto"), "f")(
        {"chosen": [system, USER, RIGHT], "rejected": [system, USER, WRONG]}
    )
    assert texts.kind == "implicit"
    assert texts.prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user")
    assert texts.prompt.endswith("<|im_start|>assistant\n")
    assert texts.chosen == "4<|im_end|>\n"


def test_prompt_ending_with_an_assistant_turn_is_continued(tiny_tokenizer: Any) -> None:
    partial = {"role": "assistant", "content": "The answer is"}
    texts = TextNormaliser(tiny_tokenizer, RowOptions("auto"), "f")(
        {"prompt": [USER, partial], "chosen": [{"role": "assistant", "content": " 4"}],
         "rejected": [{"role": "assistant", "content": " 5"}]}
    )  # fmt: skip
    assert texts.prompt.endswith("The answer is")
    assert texts.chosen.startswith("<|im_end|>")  # ChatML closes the prompt's turn first


def test_string_answers_in_a_conversational_row_become_assistant_turns(tiny_tokenizer: Any) -> None:
    texts = TextNormaliser(tiny_tokenizer, RowOptions("auto"), "f")(
        {"prompt": [USER], "chosen": "4", "rejected": "5"}
    )
    assert texts.chosen == "4<|im_end|>\n"


def test_every_row_problem(tiny_tokenizer: Any) -> None:
    n = TextNormaliser(tiny_tokenizer, RowOptions("auto"), "f")
    assert reason(n, {"prompt": "q", "rejected": "b"}) == "missing_field"
    assert reason(n, {"prompt": None, "chosen": "a", "rejected": "b"}) == "missing_field"
    assert reason(n, {"prompt": " ", "chosen": "a", "rejected": "b"}) == "empty_field"
    assert reason(n, {"prompt": "q", "chosen": 3, "rejected": "b"}) == "not_a_string"
    assert reason(n, {"prompt": "q", "chosen": "a", "rejected": "a"}) == "identical_answers"
    assert reason(n, {"prompt": [USER], "chosen": [], "rejected": [WRONG]}) == "empty_field"
    assert reason(n, {"prompt": ["hi"], "chosen": [RIGHT], "rejected": [WRONG]}) == "bad_message"
    odd = {"role": "robot", "content": "beep"}
    assert reason(n, {"prompt": [odd], "chosen": [RIGHT], "rejected": [WRONG]}) == "wrong_role"
    assert reason(n, {"prompt": [USER], "chosen": [USER], "rejected": [WRONG]}) == "wrong_role"
    system_only = [{"role": "system", "content": "s"}]
    assert (
        reason(n, {"prompt": system_only, "chosen": [RIGHT], "rejected": [WRONG]}) == "wrong_role"
    )
    bad = {"role": "user", "content": ["x"]}
    assert reason(n, {"prompt": [bad], "chosen": [RIGHT], "rejected": [WRONG]}) == "not_a_string"
    other = {"role": "user", "content": "What is 3 + 3?"}
    assert reason(n, {"chosen": [USER, RIGHT], "rejected": [other, WRONG]}) == "prompt_mismatch"
    assert reason(n, {"chosen": [USER, RIGHT], "rejected": [USER, RIGHT]}) == "identical_answers"
    assert reason(n, {"chosen": "a", "rejected": "b"}) == "missing_field"
    assert reason(n, {"chosen": "a", "rejected": [RIGHT]}) == "missing_field"


def test_requested_format_is_enforced(tiny_tokenizer: Any) -> None:
    standard = TextNormaliser(tiny_tokenizer, RowOptions("standard"), "f")
    row = {"prompt": [USER], "chosen": [RIGHT], "rejected": [WRONG]}
    assert reason(standard, row) == "wrong_format"
    conversational = TextNormaliser(tiny_tokenizer, RowOptions("conversational"), "f")
    assert reason(conversational, {"prompt": "q", "chosen": "a", "rejected": "b"}) == "wrong_format"


def test_conversational_rows_need_a_chat_template(tiny_tokenizer: Any) -> None:
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None
    with pytest.raises(DataError, match="chat template"):
        TextNormaliser(tok, RowOptions("auto"), "f.jsonl")(
            {"prompt": [USER], "chosen": [RIGHT], "rejected": [WRONG]}
        )


def test_scored_candidates_pick_best_and_worst(tiny_tokenizer: Any) -> None:
    n = TextNormaliser(tiny_tokenizer, RowOptions("scored"), "f")
    row = {"prompt": "Translate: the cat", "candidates": ["le chien", "le chat", "chat le"],
           "scores": [0.2, 0.9, 0.5]}  # fmt: skip
    texts = n(row)
    assert (texts.chosen, texts.rejected, texts.kind) == ("le chat", "le chien", "scored")
    # a tie for the best: the first candidate wins, and the tie is counted
    tie = {**row, "scores": [0.9, 0.9, 0.1]}
    assert (n(tie).chosen, n(tie).rejected) == ("le chien", "chat le")
    assert n.scored.ties_for_best == 2
    # a missing score: that candidate is skipped and counted
    missing = {**row, "scores": [None, 0.9, 0.5]}
    assert (n(missing).chosen, n(missing).rejected) == ("le chat", "chat le")
    assert n.scored.missing_scores == 2
    assert reason(n, {**row, "scores": [None, None, 0.5]}) == "too_few_scored"
    assert reason(n, {**row, "scores": [0.5, 0.5, 0.5]}) == "tied_scores"
    assert reason(n, {**row, "scores": [0.5, 0.5]}) == "wrong_format"
    assert reason(n, {"prompt": "p", "candidates": None, "scores": [1]}) == "missing_field"


def test_every_format_and_canonical_name_says_what_it_means() -> None:
    from cpo_cli.format_names import (
        CANONICAL_COLUMNS,
        COLUMN_MEANINGS,
        DATA_FORMATS,
        FORMAT_MEANINGS,
    )

    assert list(FORMAT_MEANINGS) == list(DATA_FORMATS)
    assert list(COLUMN_MEANINGS) == list(CANONICAL_COLUMNS)
