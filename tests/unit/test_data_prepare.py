"""The preparation pipeline on the shipped data: each format, the messy file's exact report,
sources, strict mode, saving, the manifest check and the in-process cache."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from support import make_training

from cpo_cli.assets import DEMO_DATA_DIR
from cpo_cli.data import load_prepared, prepare_dataset, save_prepared
from cpo_cli.errors import DataError
from cpo_cli.recipe import DataSource, TrainingConfig

COLUMNS = [
    "prompt",
    "chosen",
    "rejected",
    "prompt_input_ids",
    "chosen_input_ids",
    "rejected_input_ids",
]


def training(**overrides: Any) -> TrainingConfig:
    return make_training(**overrides)


def demo(name: str) -> Path:
    return DEMO_DATA_DIR / name


@pytest.mark.parametrize(
    ("name", "fmt", "rows"),
    [
        ("demo_train.jsonl", "standard", 300),
        ("demo_train_conversational.jsonl", "conversational", 300),
        ("demo_eval_implicit.jsonl", "implicit", 60),
    ],
)
def test_each_shipped_format(tiny_tokenizer: Any, name: str, fmt: str, rows: int) -> None:
    prepared = prepare_dataset(demo(name), tiny_tokenizer, training())
    report = prepared.report
    assert (report.format, report.rows_in, report.rows_kept, report.dropped) == (
        fmt,
        rows,
        rows,
        {},
    )
    ds = prepared.dataset
    assert ds.column_names == COLUMNS and len(ds) == rows
    eos, bos = tiny_tokenizer.eos_token_id, tiny_tokenizer.bos_token_id
    for row in ds.select(range(10)):
        assert row["prompt_input_ids"][0] == bos and row["prompt_input_ids"].count(bos) == 1
        for answer in (row["chosen_input_ids"], row["rejected_input_ids"]):
            assert answer[-1] == eos and answer.count(eos) == 1
    assert report.lengths["chosen"].max > 0 and report.tokens_per_epoch > 0


def test_conversational_and_standard_copies_hold_the_same_answers(tiny_tokenizer: Any) -> None:
    conv = prepare_dataset(demo("demo_train_conversational.jsonl"), tiny_tokenizer, training())
    row = conv.dataset[0]
    assert row["prompt"].endswith("<|im_start|>assistant\n")
    assert tiny_tokenizer.decode(row["chosen_input_ids"]).endswith(".<|im_end|>")


def test_scored_candidates_with_a_column_mapping(tiny_tokenizer: Any) -> None:
    source = DataSource(
        path=str(demo("demo_scored.jsonl")),
        columns={"prompt": "source", "candidates": "translations"},
    )
    report = prepare_dataset(source, tiny_tokenizer, training()).report
    assert report.format == "scored"
    assert (report.rows_in, report.rows_kept) == (40, 34)
    assert report.dropped == {"too_few_scored": 2, "tied_scores": 4}
    assert report.dropped_rows["tied_scores"] == [7, 17, 27, 37]
    assert any("4 ties for the best" in note and "6 candidates" in note for note in report.notes)


MESSY_DROPS = {
    "missing_field": [1, 9, 14],
    "empty_field": [2, 3, 11],
    "not_a_string": [4, 8],
    "bad_message": [13],
    "wrong_role": [6],
    "prompt_mismatch": [7],
    "identical_answers": [5],
}


def test_messy_file_report_is_exact(tiny_tokenizer: Any) -> None:
    report = prepare_dataset(demo("demo_messy.jsonl"), tiny_tokenizer, training()).report
    assert (report.rows_in, report.rows_kept, report.rows_dropped) == (15, 3, 12)
    assert report.dropped_rows == MESSY_DROPS
    assert report.dropped == {k: len(v) for k, v in MESSY_DROPS.items()}
    assert report.truncated == 1  # the long prompt (row 12) is cut, not dropped
    assert report.lengths["prompt"].max == 512


def test_messy_file_with_tiny_lengths_drops_the_long_row(tiny_tokenizer: Any) -> None:
    report = prepare_dataset(
        demo("demo_messy.jsonl"), tiny_tokenizer, training(max_length=64, max_prompt_length=64)
    ).report
    assert report.dropped_rows["no_answer_room"] == [12]
    assert report.rows_kept == 2
    assert "no_answer_room: 1" in "\n".join(report.drop_lines())


def test_strict_turns_drops_into_an_error(tiny_tokenizer: Any) -> None:
    with pytest.raises(DataError, match=r"12 of 15 rows would be dropped") as info:
        prepare_dataset(demo("demo_messy.jsonl"), tiny_tokenizer, training(), strict=True)
    assert re.search(r"missing_field: 3 .*rows 1, 9, 14", "\n".join(info.value.lines()))
    prepared = prepare_dataset(demo("demo_eval.jsonl"), tiny_tokenizer, training(), strict=True)
    assert prepared.report.rows_kept == 60


def test_report_json_round_trip(tiny_tokenizer: Any) -> None:
    report = prepare_dataset(demo("demo_messy.jsonl"), tiny_tokenizer, training()).report
    data = json.loads(json.dumps(report.to_dict()))
    assert data["rows_dropped"] == 12 and data["dropped"]["missing_field"] == 3
    assert set(data["lengths"]["prompt"]) == {"p50", "p90", "p99", "max", "mean"}
    assert 0 < data["truncated_share"] < 1


# ---- sources ---------------------------------------------------------------------------------


def _standard_rows() -> list[dict[str, Any]]:
    lines = demo("demo_eval.jsonl").read_text().splitlines()[:20]
    return [json.loads(line) for line in lines]


def test_parquet_csv_json_and_saved_folder_give_the_same_pairs(
    tiny_tokenizer: Any, tmp_path: Path
) -> None:
    import datasets

    rows = _standard_rows()
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.to_csv(str(tmp_path / "d.csv"), index=False)
    (tmp_path / "d.json").write_text(json.dumps(rows))
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "saved"))
    reference = prepare_dataset(demo("demo_eval.jsonl"), tiny_tokenizer, training())
    expected = reference.dataset.select(range(20))["chosen_input_ids"]
    for source in (
        tmp_path / "d.parquet",
        tmp_path / "d.csv",
        tmp_path / "d.json",
        DataSource(path=str(tmp_path / "saved"), split="test"),
    ):
        got = prepare_dataset(source, tiny_tokenizer, training())
        assert got.dataset["chosen_input_ids"] == expected, source
    with pytest.raises(DataError, match="no split 'train'"):
        prepare_dataset(str(tmp_path / "saved"), tiny_tokenizer, training())


def test_missing_file_names_it(tiny_tokenizer: Any, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"dataset file not found: .*nope\.jsonl"):
        prepare_dataset(tmp_path / "nope.jsonl", tiny_tokenizer, training())


def test_bad_json_line_names_the_line(tiny_tokenizer: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON"):
        prepare_dataset(bad, tiny_tokenizer, training())


def test_offline_hub_name_is_a_clear_error(
    tiny_tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(DataError, match="cannot load dataset 'someone/no-such-prefs'") as info:
        prepare_dataset(
            DataSource(path="someone/no-such-prefs", split="train"), tiny_tokenizer, training()
        )
    assert "HF_HUB_OFFLINE" in (info.value.hint or "")
    assert time.monotonic() - start < 60


def test_max_rows_and_mapping_errors(tiny_tokenizer: Any) -> None:
    prepared = prepare_dataset(
        DataSource(path=str(demo("demo_train.jsonl")), max_rows=7), tiny_tokenizer, training()
    )
    assert prepared.report.rows_in == 7
    with pytest.raises(DataError, match="prompt=question"):
        prepare_dataset(
            DataSource(path=str(demo("demo_train.jsonl")), columns={"prompt": "question"}),
            tiny_tokenizer,
            training(),
        )


def test_workers_give_the_same_result(tiny_tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from cpo_cli.data import pipeline

    single = prepare_dataset(demo("demo_train.jsonl"), tiny_tokenizer, training())
    monkeypatch.setattr(pipeline, "MIN_ROWS_FOR_WORKERS", 0)
    monkeypatch.setattr(pipeline, "BATCH_SIZE", 100)
    multi = prepare_dataset(demo("demo_train.jsonl"), tiny_tokenizer, training(dataset_num_proc=2))
    assert multi.dataset.to_dict() == single.dataset.to_dict()
    # bad rows and scored rows survive the trip to the workers (as JSON) with the same report
    monkeypatch.setattr(pipeline, "BATCH_SIZE", 4)
    messy = prepare_dataset(demo("demo_messy.jsonl"), tiny_tokenizer, training(dataset_num_proc=2))
    assert messy.report.dropped_rows == MESSY_DROPS
    scored = DataSource(
        path=str(demo("demo_scored.jsonl")),
        columns={"prompt": "source", "candidates": "translations"},
    )
    notes = prepare_dataset(scored, tiny_tokenizer, training(dataset_num_proc=2)).report.notes
    assert any("4 ties for the best" in n and "6 candidates" in n for n in notes)


# ---- saving, the manifest check, the cache ---------------------------------------------------


def test_save_and_load_prepared(tiny_tokenizer: Any, tmp_path: Path) -> None:
    prepared = prepare_dataset(demo("demo_eval.jsonl"), tiny_tokenizer, training())
    out = save_prepared(prepared, tmp_path / "prepared")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["rows"] == {
        "in": 60,
        "kept": 60,
        "dropped": 0,
    }
    assert manifest["settings"]["max_length"] == 1024
    assert manifest["tokenizer"]["fingerprint"] and manifest["tokenizer"]["chat_template"]
    assert len(manifest["source"]["identity"]["content"]) == 40  # a hash of the bytes
    loaded = load_prepared(out, tiny_tokenizer, training())
    assert loaded.dataset.to_dict() == prepared.dataset.to_dict()
    assert loaded.report.rows_kept == 60
    # a DataSource pointing at the folder is loaded, not prepared again
    again = prepare_dataset(out, tiny_tokenizer, training())
    assert again.path == out
    # saving again replaces the folder; a foreign folder is refused
    save_prepared(prepared, out)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="refusing to overwrite"):
        save_prepared(prepared, tmp_path / "other")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_load_prepared_refuses_other_lengths_and_tokenizers(
    tiny_tokenizer: Any, tmp_path: Path
) -> None:
    import copy

    prepared = prepare_dataset(demo("demo_eval.jsonl"), tiny_tokenizer, training())
    out = save_prepared(prepared, tmp_path / "prepared")
    with pytest.raises(DataError, match=r"max_length: prepared with 1024, this run uses 256"):
        load_prepared(out, tiny_tokenizer, training(max_length=256, max_prompt_length=128))
    with pytest.raises(DataError, match=r"truncation_mode: prepared with 'keep_end'"):
        load_prepared(out, tiny_tokenizer, training(truncation_mode="keep_start"))
    other_template = copy.deepcopy(tiny_tokenizer)
    other_template.chat_template = "{{ messages[0]['content'] }}"
    with pytest.raises(DataError, match="chat template: prepared with"):
        load_prepared(out, other_template, training())
    no_bos = copy.deepcopy(tiny_tokenizer)
    no_bos.bos_token = None
    with pytest.raises(DataError, match="tokenizer: prepared with"):
        load_prepared(out, no_bos, training())
    (out / "manifest.json").unlink()
    with pytest.raises(DataError, match="not a prepared dataset"):
        load_prepared(out, tiny_tokenizer, training())


def test_in_process_cache_is_reused_and_keyed(tiny_tokenizer: Any, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(demo("demo_eval.jsonl").read_text())
    first = prepare_dataset(data, tiny_tokenizer, training(), cache_dir=tmp_path / "cache")
    assert first.path is not None and (first.path / "manifest.json").is_file()
    second = prepare_dataset(data, tiny_tokenizer, training(), cache_dir=tmp_path / "cache")
    assert second.path == first.path
    other = prepare_dataset(
        data, tiny_tokenizer, training(max_length=512), cache_dir=tmp_path / "cache"
    )
    assert other.path != first.path
    data.write_text("\n".join(demo("demo_eval.jsonl").read_text().splitlines()[:10]) + "\n")
    changed = prepare_dataset(data, tiny_tokenizer, training(), cache_dir=tmp_path / "cache")
    assert changed.path != first.path and changed.report.rows_kept == 10
    # the entries made from the file before it changed can never be hit again: pruned
    assert not first.path.exists() and other.path is not None and not other.path.exists()
    assert changed.path is not None and changed.path.is_dir()


def test_encoder_decoder_preparation(tiny_tokenizer: Any) -> None:
    prepared = prepare_dataset(
        demo("demo_eval.jsonl"),
        tiny_tokenizer,
        training(max_completion_length=6, max_prompt_length=8),
        is_encoder_decoder=True,
    )
    ds = prepared.dataset
    assert max(len(ids) for ids in ds["chosen_input_ids"]) <= 6
    assert max(len(ids) for ids in ds["prompt_input_ids"]) <= 8
    assert all(ids[-1] == tiny_tokenizer.eos_token_id for ids in ds["rejected_input_ids"])
    assert prepared.manifest["settings"]["is_encoder_decoder"] is True
