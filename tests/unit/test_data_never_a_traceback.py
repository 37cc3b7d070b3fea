"""No input gives a traceback: when nothing is usable the one error says why (counts per
specific reason, example rows, the dataset's own columns, the likely fix); oversized rows are
dropped before tokenising; any row of any shape is either a pair or a counted drop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from published import helpsteer3, write_jsonl
from support import make_training

from cpo_cli.data import prepare_dataset
from cpo_cli.data.formats import TextNormaliser
from cpo_cli.data.pipeline import BATCH_BYTES, batches, text_bytes
from cpo_cli.data.problems import DROP_REASONS, RowProblem
from cpo_cli.data.rows import Plain, RowOptions
from cpo_cli.data.tokenize import LengthSettings, tokenize_pairs
from cpo_cli.errors import DataError
from cpo_cli.recipe import TrainingConfig
from cpo_cli.recipe.schema import DataSource


def training(**overrides: Any) -> TrainingConfig:
    return make_training(**overrides)


def error_text(err: DataError) -> str:
    return "\n".join(err.lines())


def test_all_rows_dropped_is_one_error_with_reasons_examples_columns_and_fix(
    tiny_tokenizer: Any, tmp_path: Path
) -> None:
    rows = [
        {"query": "What is 2 + 2?", "chosen": [{"role": "assistant", "content": "4"}],
         "rejected": [{"role": "assistant", "content": "5"}]},
    ] * 4  # fmt: skip
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match=r"no usable pairs .*all 4 rows were dropped") as info:
        prepare_dataset(path, tiny_tokenizer, training())
    text = error_text(info.value)
    assert "prompt_mismatch: 4 (chosen and rejected do not share a prompt" in text
    assert "e.g. row 0 (train.jsonl:1) prompt_mismatch" in text and '"query"' in text
    assert text.count("e.g. row") == 3
    assert "the dataset's columns: query, chosen, rejected" in text
    assert info.value.hint == "name the columns: --columns prompt=query"


def test_prompt_text_with_answer_conversations_is_read(tiny_tokenizer: Any, tmp_path: Path) -> None:
    """Before: `wrong_format` for every row of such a file, and an IndexError from tokenising
    an empty batch. Now: TRL's reading (the text prompt as the user turn)."""
    rows = [
        {"prompt": "What is 2 + 2?", "chosen": [{"role": "assistant", "content": "4"}],
         "rejected": [{"role": "assistant", "content": "5"}]},
    ]  # fmt: skip
    prepared = prepare_dataset(write_jsonl(tmp_path / "t.jsonl", rows), tiny_tokenizer, training())
    assert prepared.dataset["chosen"] == ["4<|im_end|>\n"]


def test_a_first_batch_with_nothing_usable_stops_early(
    tiny_tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cpo_cli.data import pipeline

    monkeypatch.setattr(pipeline, "BATCH_SIZE", 5)
    bad = [{"prompt": "q", "chosen": 1, "rejected": 2}] * 5
    good = [{"prompt": "q", "chosen": "a", "rejected": "b"}] * 20
    path = write_jsonl(tmp_path / "train.jsonl", bad + good)
    with pytest.raises(DataError, match="the first 5 rows were all dropped") as info:
        prepare_dataset(path, tiny_tokenizer, training())
    assert "not_a_string: 5 (a field or message content is not a string — chosen is int: 5" in (
        error_text(info.value)
    )


def test_pairwise_data_under_the_wrong_format_points_at_pairwise(
    tiny_tokenizer: Any, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "hs.jsonl", helpsteer3())
    with pytest.raises(DataError, match="no usable pairs") as info:
        prepare_dataset(DataSource(path=str(path), format="standard"), tiny_tokenizer, training())
    assert info.value.hint == "this looks like pairwise data: --format pairwise"


def test_unknown_layout_lists_the_files_columns(tiny_tokenizer: Any, tmp_path: Path) -> None:
    rows = [{"instruction_text": "q", "good_answer": "a", "bad_answer": "b"}]
    with pytest.raises(
        DataError, match="columns instruction_text, good_answer, bad_answer"
    ) as info:
        prepare_dataset(write_jsonl(tmp_path / "x.jsonl", rows), tiny_tokenizer, training())
    assert "--columns" in (info.value.hint or "") and "chosen=good_answer" in (
        info.value.hint or ""
    )


def test_empty_batches_tokenise_to_nothing(tiny_tokenizer: Any) -> None:
    out = tokenize_pairs([], [], [], tiny_tokenizer, LengthSettings.from_training(training()))
    assert out.drop == [] and out.prompt_input_ids == []


# ---- the byte cap --------------------------------------------------------------------------


def test_rows_over_the_byte_cap_are_dropped_before_tokenising(
    tiny_tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cpo_cli.data import pipeline

    seen: list[int] = []
    real = pipeline.tokenize_pairs

    def spy(prompts: Any, *args: Any) -> Any:
        seen.extend(len(p) for p in prompts)
        return real(prompts, *args)

    monkeypatch.setattr(pipeline, "tokenize_pairs", spy)
    huge = "x" * 300_000
    rows = [
        {"prompt": "small", "chosen": "a", "rejected": "b"},
        {"prompt": huge, "chosen": "a", "rejected": "b"},
        {"prompt": [{"role": "user", "content": "é" * 60_000}], "chosen": "a", "rejected": "b"},
    ]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    source = DataSource(path=str(path), max_row_bytes=100_000)
    prepared = prepare_dataset(source, tiny_tokenizer, training())
    assert prepared.report.dropped == {"too_long": 2}  # é is two bytes: 120,000 > 100,000
    assert prepared.report.drop_details["too_long"] == {"over 100,000 bytes": 2}
    assert max(seen) < 1000  # neither long row reached the tokenizer


def test_text_bytes_and_batches_bound_memory() -> None:
    assert text_bytes({"a": ["é", {"b": "xyz"}], "n": 3}, 100) == 5
    assert text_bytes({"a": "x" * 50, "b": "y" * 50}, 10) <= 50  # stops counting past the limit
    big = {"prompt": "x" * (BATCH_BYTES // 3)}
    spans = batches([big] * 7 + [{"prompt": "y"}], max_row_bytes=BATCH_BYTES)
    assert spans == [(0, 3), (3, 6), (6, 8)]
    over = {"prompt": "x" * 200}
    assert batches([over] * 3, max_row_bytes=100) == [(0, 3)]  # dropped rows weigh nothing


# ---- any row of any shape: a pair or a counted drop -----------------------------------------

_TEXT = st.one_of(
    st.text(max_size=12), st.sampled_from(["", " ", "\n\nHuman: hi\n\nAssistant: yo"])
)
_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", "robot"]), "content": _TEXT}
)
_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _TEXT, _MESSAGE),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(_TEXT, children, max_size=3)
    ),
    max_leaves=6,
)
_KEYS = ["prompt", "messages", "chosen", "rejected", "system", "candidates", "scores",
         "response_a", "response_b", "preference", "translation"]  # fmt: skip
_ROW = st.dictionaries(st.sampled_from(_KEYS), _VALUE, max_size=6)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    row=_ROW,
    fmt=st.sampled_from(["auto", "standard", "conversational", "implicit", "scored", "pairwise"]),
)
def test_any_row_is_a_pair_or_a_counted_drop(
    tiny_tokenizer: Any, row: dict[str, Any], fmt: str
) -> None:
    [result] = TextNormaliser(tiny_tokenizer, RowOptions(fmt), "f").many([row])
    if isinstance(result, RowProblem):
        assert result.reason in DROP_REASONS
    else:
        assert isinstance(result, Plain) and isinstance(result.prompt, str)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(_ROW, min_size=1, max_size=6),
    fmt=st.sampled_from(["auto", "alma_r", "pairwise", "scored"]),
)
def test_any_file_is_pairs_or_a_data_error(
    tiny_tokenizer: Any, tmp_path_factory: pytest.TempPathFactory, rows: list[Any], fmt: str
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "rows.jsonl"
    path.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows), encoding="utf-8")
    try:
        prepared = prepare_dataset(
            DataSource(path=str(path), format=fmt), tiny_tokenizer, training()
        )
    except DataError:
        return
    assert prepared.report.rows_kept == len(prepared.dataset) > 0
