"""The prepared-data cache: last use recorded, stale and least recently used entries pruned,
nothing without the marker ever deleted."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cpo_cli.data import cache


def _entry(root: Path, name: str, source: Path, used_at: float) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")
    cache.mark_used(folder, [source])
    os.utime(folder / cache.MARKER, (used_at, used_at))
    return folder


def test_least_recently_used_go_beyond_the_limit(tmp_path: Path) -> None:
    src = tmp_path / "train.jsonl"
    src.write_text("{}\n")
    root = tmp_path / "prepared"
    now = time.time()
    old, mid, new = (
        _entry(root, n, src, now - age) for n, age in [("a", 300), ("b", 200), ("c", 100)]
    )
    removed = cache.prune(root, keep=new, limit=2)
    assert removed == [old]
    assert mid.is_dir() and new.is_dir()


def test_an_entry_whose_source_changed_is_pruned_first(tmp_path: Path) -> None:
    src = tmp_path / "train.jsonl"
    src.write_text("{}\n")
    root = tmp_path / "prepared"
    stale = _entry(root, "stale", src, time.time())
    src.write_text('{"changed": true}\n')
    current = _entry(root, "current", src, time.time())
    assert cache.prune(root, keep=current, limit=10) == [stale]


def test_folders_without_the_marker_are_never_deleted(tmp_path: Path) -> None:
    root = tmp_path / "prepared"
    user_data = root / "my-data"
    user_data.mkdir(parents=True)
    (user_data / "manifest.json").write_text("{}")  # looks prepared, but is not our entry
    assert cache.prune(root, limit=0) == []
    assert cache.prune(root, limit=1) == []
    assert user_data.is_dir()


def test_the_kept_entry_survives_a_limit_of_one(tmp_path: Path) -> None:
    src = tmp_path / "train.jsonl"
    src.write_text("{}\n")
    root = tmp_path / "prepared"
    now = time.time()
    a = _entry(root, "a", src, now)
    b = _entry(root, "b", src, now - 50)
    assert cache.prune(root, keep=b, limit=1) == [a]
    assert b.is_dir()


def test_limit_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPO_PREPARED_CACHE_ENTRIES", "3")
    assert cache.max_entries() == 3
    monkeypatch.setenv("CPO_PREPARED_CACHE_ENTRIES", "lots")
    assert cache.max_entries() == cache.DEFAULT_MAX_ENTRIES


def test_a_read_only_cache_is_not_an_error(tmp_path: Path) -> None:
    src = tmp_path / "train.jsonl"
    src.write_text("{}\n")
    missing = tmp_path / "no-such-folder"
    cache.mark_used(missing, [src])  # cannot write the marker: housekeeping, not a failure


def test_one_cache_root_for_prepared_data_and_converted_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cpo_cli.assets.smollm2 import default_cache_dir
    from cpo_cli.cache_root import cache_root

    monkeypatch.setenv("CPO_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    assert cache.prepared_cache_dir() == tmp_path / "prepared"
    assert default_cache_dir().parent == tmp_path
    monkeypatch.delenv("CPO_CACHE")
    assert cache_root() == Path.home() / ".cache" / "cpo"
