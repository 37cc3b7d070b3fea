"""Containers as the Hub ships them (compressed files, globs, snapshot folders, config folders),
bytes that are not text, and the content-keyed cache."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from published import compress, write_json, write_jsonl, write_parquet
from support import make_training

from cpo_cli.data import prepare_dataset
from cpo_cli.errors import DataError
from cpo_cli.recipe import TrainingConfig
from cpo_cli.recipe.schema import DataSource

ROWS = [
    {"prompt": "Q1", "chosen": " good one", "rejected": " bad one"},
    {"prompt": "Q2", "chosen": " good two", "rejected": " bad two"},
    {"prompt": "Q3", "chosen": " good three", "rejected": " bad three"},
]


def training(**overrides: Any) -> TrainingConfig:
    return make_training(**overrides)


def prompts(tok: Any, path: Path | str, **source: Any) -> list[str]:
    prepared = prepare_dataset(DataSource(path=str(path), **source), tok, training())
    return list(prepared.dataset["prompt"])


@pytest.mark.parametrize(
    "name", ["d.jsonl.gz", "d.jsonl.bz2", "d.jsonl.zst", "d.jsonl.xz", "d.json.gz", "d.json"]
)
def test_compressed_files(tiny_tokenizer: Any, tmp_path: Path, name: str) -> None:
    writer = write_json if ".json." in name or name.endswith(".json") else write_jsonl
    path = writer(tmp_path / name, ROWS)
    assert prompts(tiny_tokenizer, path) == ["Q1", "Q2", "Q3"]


def test_globs_and_several_files(tiny_tokenizer: Any, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "part-0.jsonl", ROWS[:1])
    write_jsonl(tmp_path / "part-1.jsonl.gz", ROWS[1:])
    write_jsonl(tmp_path / "other.jsonl", ROWS[:1])
    assert prompts(tiny_tokenizer, tmp_path / "part-*") == ["Q1", "Q2", "Q3"]
    with pytest.raises(DataError, match=r"no .* file matches"):
        prompts(tiny_tokenizer, tmp_path / "nothing-*.jsonl")


def test_snapshot_folders(tiny_tokenizer: Any, tmp_path: Path) -> None:
    # data/{split}-xxxxx-of-xxxxx.parquet shards
    shards = tmp_path / "shards"
    write_parquet(shards / "data" / "train-00000-of-00002.parquet", ROWS[:2])
    write_parquet(shards / "data" / "train-00001-of-00002.parquet", ROWS[2:])
    write_parquet(shards / "data" / "test-00000-of-00001.parquet", ROWS[:1])
    (shards / "README.md").write_text("# no YAML header\n")
    assert prompts(tiny_tokenizer, shards) == ["Q1", "Q2", "Q3"]
    assert prompts(tiny_tokenizer, shards, split="test") == ["Q1"]
    # {split}.jsonl at the top
    flat = tmp_path / "flat"
    write_jsonl(flat / "train.jsonl", ROWS)
    write_jsonl(flat / "validation.jsonl", ROWS[2:])
    assert prompts(tiny_tokenizer, flat, split="validation") == ["Q3"]
    with pytest.raises(DataError, match="no split 'test'") as info:
        prompts(tiny_tokenizer, flat, split="test")
    assert "train" in (info.value.hint or "") and "validation" in (info.value.hint or "")
    # config folders without a card: --subset names the folder
    configs = tmp_path / "configs"
    write_jsonl(configs / "a" / "train.jsonl", ROWS[:1])
    write_jsonl(configs / "b" / "train.jsonl", ROWS[1:])
    assert prompts(tiny_tokenizer, configs, subset="b") == ["Q2", "Q3"]
    with pytest.raises(DataError, match="no sub-folder 'c'") as info:
        prompts(tiny_tokenizer, configs, subset="c")
    assert "a, b" in (info.value.hint or "")


def test_a_folder_with_no_data_files(tiny_tokenizer: Any, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="empty"):
        prompts(tiny_tokenizer, tmp_path / "empty")


# ---- bytes that are not what they claim -----------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["r.jsonl", "r.json", "r.parquet", "r.csv", "r.jsonl.gz", "r.jsonl.zst", "r.jsonl.bz2"],
)
def test_random_bytes_are_a_clear_error(tiny_tokenizer: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(os.urandom(4096) + b"\n" + os.urandom(4096))
    with pytest.raises(DataError) as info:
        prompts(tiny_tokenizer, path)
    assert name in "\n".join(info.value.lines())


def test_a_jsonl_file_of_binary_bytes_says_so(tiny_tokenizer: Any, tmp_path: Path) -> None:
    path = tmp_path / "noise.jsonl"
    path.write_bytes(b"\xff\xfe\x00\x81" * 1000 + b"\n" + b"\x9c\xff" * 500)
    with pytest.raises(DataError, match="no usable pairs") as info:
        prompts(tiny_tokenizer, path)
    assert "bad_encoding: 2" in "\n".join(info.value.lines())
    assert "binary or compressed" in (info.value.hint or "")


def test_truncated_compressed_file(tiny_tokenizer: Any, tmp_path: Path) -> None:
    data = compress(
        tmp_path / "x.gz",
        b"".join(b'{"prompt": "q", "chosen": "a", "rejected": "b"}\n' for _ in range(500)),
    )
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.jsonl\.gz: cannot read gzip data"):
        prompts(tiny_tokenizer, path)


def test_a_line_of_invalid_utf8_drops_that_row(tiny_tokenizer: Any, tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    good = b'{"prompt": "Q1", "chosen": " a", "rejected": " b"}\n'
    bad = b'{"prompt": "caf\xe9", "chosen": " a", "rejected": " b"}\n'
    path.write_bytes(good + bad + good.replace(b"Q1", b"Q3"))
    prepared = prepare_dataset(path, tiny_tokenizer, training())
    assert list(prepared.dataset["prompt"]) == ["Q1", "Q3"]
    assert prepared.report.dropped == {"bad_encoding": 1}
    assert prepared.report.examples[0]["where"] == "mixed.jsonl:2"


def test_invalid_utf8_in_json_and_csv_names_the_line(tiny_tokenizer: Any, tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    path.write_bytes(b'[\n{"prompt": "Q1", "chosen": "a", "rejected": "b"},\n{"prompt": "\xff"}\n]')
    with pytest.raises(DataError, match=r"rows.json:3: bytes that are not UTF-8"):
        prompts(tiny_tokenizer, path)
    csv = tmp_path / "rows.csv"
    csv.write_bytes(b"prompt,chosen,rejected\nQ1,a,b\nQ2,\xe9t\xe9,b\n")
    with pytest.raises(DataError, match=r"rows.csv:3: bytes that are not UTF-8"):
        prompts(tiny_tokenizer, csv)


# ---- the cache keys on content --------------------------------------------------------------


def test_an_edit_that_keeps_size_and_mtime_is_seen(tiny_tokenizer: Any, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", ROWS)
    cache = tmp_path / "cache"
    first = prepare_dataset(path, tiny_tokenizer, training(), cache_dir=cache)
    stat = path.stat()
    path.write_bytes(path.read_bytes().replace(b"Q1", b"Q9"))  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    second = prepare_dataset(path, tiny_tokenizer, training(), cache_dir=cache)
    assert second.path != first.path
    assert list(second.dataset["prompt"]) == ["Q9", "Q2", "Q3"]
    again = prepare_dataset(path, tiny_tokenizer, training(), cache_dir=cache)
    assert again.path == second.path  # unchanged content: the entry is reused


def test_a_hub_subset_that_is_a_folder_reads_that_folder(tmp_path: Path) -> None:
    """Anthropic/hh-rlhf has no configs, only folders: `--subset helpful-base` on its Hub name
    reads that folder (`data_dir`), as on a local snapshot. `load_dataset` behaves the same on
    a local folder, which is what this runs it on."""
    from published import hh_rlhf

    from cpo_cli.data.sources import _load_hub_split

    write_jsonl(tmp_path / "helpful-base" / "train.jsonl", hh_rlhf())
    write_jsonl(tmp_path / "harmless-base" / "train.jsonl", hh_rlhf()[:1])
    source = DataSource(path=str(tmp_path), subset="helpful-base")
    assert len(_load_hub_split(source, "train")) == 2
    with pytest.raises(FileNotFoundError):
        _load_hub_split(DataSource(path=str(tmp_path), subset="nothing"), "train")


def test_relative_folder_and_glob_paths(
    tiny_tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a user types them, from the current directory (`datasets` answers absolute paths)."""
    write_parquet(tmp_path / "snap" / "data" / "train-00000-of-00001.parquet", ROWS)
    write_jsonl(tmp_path / "parts" / "a.jsonl.gz", ROWS[:1])
    monkeypatch.chdir(tmp_path)
    assert prompts(tiny_tokenizer, "snap") == ["Q1", "Q2", "Q3"]
    assert prompts(tiny_tokenizer, "parts/*.jsonl.gz") == ["Q1"]
