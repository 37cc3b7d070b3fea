"""Local data files as the Hub ships them: which files a path means, and their rows.

A path is a file (`.jsonl`, `.json`, `.parquet`, `.csv`, the text ones optionally compressed
`.gz`/`.bz2`/`.zst`/`.xz`), a glob pattern, or a folder laid out like a Hub snapshot. Which
files a pattern or folder means is decided by `datasets`' own data-files machinery
(`resolve_pattern`, `get_data_patterns`, a README's `configs:`), so a snapshot folder is read
as `load_dataset` would read it; the rows themselves are read here.

JSON rows are read with the standard library so that rows of mixed shape (a number where text
should be, a conversation in a text column) reach the row checker instead of failing Arrow's
schema inference, and so that a line of undecodable bytes drops that row (`bad_encoding`)
instead of the file. Every failure is a `DataError` naming the file (and line).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cpo_cli.data.problems import UNREADABLE
from cpo_cli.errors import DataError, first_line

ROW_FILE_TYPES = (".jsonl", ".json", ".parquet", ".csv")
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".xz": "xz"}
#: What `cpo prepare --help` and errors name as readable.
READABLE = ".jsonl/.json/.parquet/.csv (text ones also .gz/.bz2/.zst/.xz)"
_CHUNK = 1 << 20


@dataclass
class FileRows:
    """Rows read from one or more files, and where each came from (for error messages)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    #: (file, index of its first row, line number of each row or None when rows are not lines)
    parts: list[tuple[Path, int, array[int] | None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def locate(self, index: int) -> str:
        """`file:line` (or `file row k`) of row `index`."""
        for path, start, lines in reversed(self.parts):
            if index >= start:
                k = index - start
                return f"{path.name}:{lines[k]}" if lines is not None else f"{path.name} row {k}"
        return f"row {index}"


def file_type(path: Path) -> tuple[str, str | None] | None:
    """(`.jsonl`|`.json`|`.parquet`|`.csv`, compression or None), or None if not readable."""
    name = path.name.lower()
    compression = None
    for suffix, kind in COMPRESSIONS.items():
        if name.endswith(suffix):
            compression, name = kind, name[: -len(suffix)]
            break
    for suffix in ROW_FILE_TYPES:
        if name.endswith(suffix):
            if compression is not None and suffix == ".parquet":
                return None  # parquet compresses inside the file
            return suffix, compression
    return None


def has_wildcards(text: str) -> bool:
    from datasets.data_files import contains_wildcards

    return bool(contains_wildcards(text))


def resolve_files(path_text: str, subset: str | None, split: str) -> tuple[list[Path], list[str]]:
    """The data files `path_text` means (a file, a glob, a snapshot folder), plus notes."""
    if has_wildcards(path_text):
        return _glob(path_text), []
    path = Path(path_text).expanduser()
    if path.is_file():
        if file_type(path) is None:
            raise DataError(
                f"{path}: unsupported file type {''.join(path.suffixes) or '(none)'}",
                hint=f"use {READABLE}, a folder of such files, or a save_to_disk folder",
            )
        return [path], []
    if path.is_dir():
        return snapshot_files(path, subset, split)
    raise DataError(
        f"dataset file not found: {path}",
        hint="check the path (relative paths are read from the current directory)",
    )


def _glob(pattern: str) -> list[Path]:
    from datasets.data_files import resolve_pattern

    base = os.getcwd()
    try:
        found = resolve_pattern(str(Path(pattern).expanduser()), base_path=base)
    except FileNotFoundError:
        found = []
    files = sorted(Path(f) for f in found if file_type(Path(f)) is not None)
    if not files:
        raise DataError(
            f"{pattern}: no {READABLE} file matches this pattern",
            hint="check the pattern (quote it so the shell does not expand it)",
        )
    return files


def snapshot_files(folder: Path, subset: str | None, split: str) -> tuple[list[Path], list[str]]:
    """The files of `split` in a folder laid out like a Hub dataset: a README's `configs:`
    (the config named by `subset`, or the default), else a sub-folder named `subset`, else
    `datasets`' default patterns (`data/{split}-*`, `{split}.jsonl`, ...)."""
    from datasets.data_files import (
        DataFilesDict,
        EmptyDatasetError,
        get_data_patterns,
        sanitize_patterns,
    )

    folder = folder.resolve()  # `datasets` answers with absolute paths
    configs = _readme_configs(folder)
    base = folder
    patterns: Any = None
    if configs:
        name = subset or configs.get_default_config_name()
        if name is None or name not in configs:
            raise DataError(
                f"{folder}: " + ("no subset given" if name is None else f"no subset {name!r}"),
                hint=f"choose one with --subset: {', '.join(configs)}",
            )
        params = configs[name]
        if params.get("data_dir"):
            base = folder / str(params["data_dir"])
        if params.get("data_files") is not None:
            patterns = sanitize_patterns(params["data_files"])
    elif subset:
        base = folder / subset
        if not base.is_dir():
            raise DataError(
                f"{folder}: no sub-folder {subset!r} for --subset",
                hint="sub-folders: " + ", ".join(_subfolders(folder)) or "(none)",
            )
    try:
        if patterns is None:
            patterns = get_data_patterns(str(base))
        data_files = DataFilesDict.from_patterns(patterns, base_path=str(base))
    except (EmptyDatasetError, FileNotFoundError) as exc:
        raise DataError(
            f"{folder}: no data files found ({first_line(exc)})",
            hint=f"point at a file or a folder holding {READABLE} files",
        ) from exc
    splits = {
        str(k): [Path(f) for f in v if file_type(Path(f)) is not None]
        for k, v in data_files.items()
    }
    files = splits.get(split, [])
    if not files:
        found = ", ".join(k for k, v in splits.items() if v) or "(none)"
        raise DataError(f"{folder}: no split {split!r}", hint=f"choose one of: {found} (--split)")
    notes = []
    groups = sorted(
        {f.relative_to(base).parts[0] for f in files if len(f.relative_to(base).parts) > 1}
    )
    if not configs and not subset and len(groups) > 1:
        notes.append(
            f"{split}: {len(files)} files from the folders {', '.join(groups)} (as load_dataset "
            "reads them); --subset FOLDER reads one"
        )
    return sorted(files), notes


def _readme_configs(folder: Path) -> Any:
    readme = folder / "README.md"
    if not readme.is_file():
        return None
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    try:
        card = DatasetCard.load(readme)
        return MetadataConfigs.from_dataset_card_data(card.data) or None
    except Exception as exc:  # a README without YAML, or YAML datasets cannot read
        raise DataError(
            f"{readme}: cannot read its dataset card metadata: {first_line(exc)}",
            hint="fix the YAML header of README.md, or point at the data files",
        ) from exc


def _subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_files(files: list[Path], max_rows: int | None) -> FileRows:
    """Every row of `files`, in order, at most `max_rows`."""
    out = FileRows()
    for path in files:
        if max_rows is not None and len(out.rows) >= max_rows:
            break
        left = None if max_rows is None else max_rows - len(out.rows)
        start = len(out.rows)
        kind, compression = file_type(path) or (path.suffix, None)
        lines: array[int] | None = None
        if kind == ".jsonl":
            lines = array("I")
            out.rows.extend(_read_jsonl(path, compression, left, lines))
        elif kind == ".json":
            json_lines: array[int] = array("I")  # filled only for JSON lines under a .json name
            out.rows.extend(_read_json(path, compression, json_lines))
            lines = json_lines if json_lines else None
        else:
            out.rows.extend(_read_tabular(path, kind))
        if left is not None:
            del out.rows[start + left :]
        out.parts.append((path, start, lines))
    return out


@contextmanager
def open_binary(path: Path, compression: str | None) -> Iterator[IO[bytes]]:
    """The file's bytes, decompressed, as a stream that iterates over lines."""
    if compression == "zstd":
        try:
            import zstandard
        except ImportError as exc:
            raise DataError(
                f"{path}: reading .zst files needs the zstandard package",
                hint="pip install zstandard",
            ) from exc
        with open(path, "rb") as raw:
            reader = zstandard.ZstdDecompressor().stream_reader(raw)
            with io.BufferedReader(reader) as stream:  # type: ignore[type-var]
                yield stream
        return
    openers: dict[str | None, Any] = {"gzip": gzip.open, "bz2": bz2.open, "xz": lzma.open}
    with openers.get(compression, open)(path, "rb") as f:
        yield f


def _decompress_error(path: Path, compression: str | None, exc: Exception) -> DataError:
    what = f"{compression} data" if compression else "this file"
    return DataError(
        f"{path}: cannot read {what}: {first_line(exc)}",
        hint="the file may be truncated, or its name may not match its content",
    )


def _read_jsonl(
    path: Path, compression: str | None, limit: int | None, lines: array[int]
) -> Iterator[dict[str, Any]]:
    count = 0
    try:
        with open_binary(path, compression) as stream:
            for lineno, raw in enumerate(stream, start=1):
                if limit is not None and count >= limit:
                    return
                if not raw.strip():
                    continue
                lines.append(lineno)
                count += 1
                try:
                    text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError:
                    yield {UNREADABLE: ["bad_encoding", "a line is not valid UTF-8"]}
                    continue
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})",
                        hint="each line of a .jsonl file must be one JSON object (is the file "
                        "binary, or compressed under another name?)",
                    ) from exc
                yield value if isinstance(value, dict) else {"__not_an_object__": value}
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise _decompress_error(path, compression, exc) from exc
    except DataError:
        raise
    except Exception as exc:  # zstandard.ZstdError and kin
        raise _decompress_error(path, compression, exc) from exc


def _read_json(path: Path, compression: str | None, lines: array[int]) -> list[dict[str, Any]]:
    try:
        with open_binary(path, compression) as f:
            data = f.read()
    except DataError:
        raise
    except Exception as exc:
        raise _decompress_error(path, compression, exc) from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}:{line}: bytes that are not UTF-8 text",
            hint="save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8), or fix that line",
        ) from exc
    del data
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.lineno > 1:  # maybe JSON lines under a .json name
            try:
                return list(_read_jsonl(path, compression, None, lines))
            except DataError:
                pass
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), list):
        value = next(iter(value.values()))  # {"data": [...]}
    if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
        keys = list(value)
        return [dict(zip(keys, vals, strict=False)) for vals in zip(*value.values(), strict=False)]
    if isinstance(value, list):
        return [v if isinstance(v, dict) else {"__not_an_object__": v} for v in value]
    raise DataError(
        f"{path}: expected a list of rows or a mapping of columns, found {type(value).__name__}"
    )


def _read_tabular(path: Path, kind: str) -> list[dict[str, Any]]:
    try:
        if kind == ".parquet":
            import pyarrow.parquet as pq

            rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
            return rows
        import pandas as pd

        frame = pd.read_csv(path)  # compression inferred from the name, as `datasets` does
        csv_rows: list[dict[str, Any]] = (
            frame.astype(object).where(frame.notna(), None).to_dict("records")
        )
        return csv_rows
    except UnicodeDecodeError as exc:
        line = _first_undecodable_line(path)
        where = f"{path}:{line}" if line else str(path)
        raise DataError(
            f"{where}: bytes that are not UTF-8 text",
            hint="save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
        ) from exc
    except Exception as exc:  # pyarrow/pandas raise many types for unreadable files
        raise DataError(f"{path}: cannot read this {kind[1:]} file: {first_line(exc)}") from exc


def _first_undecodable_line(path: Path) -> int | None:
    _, compression = file_type(path) or (None, None)
    with open_binary(path, compression) as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return lineno
    return None


def content_digest(files: list[Path]) -> str:
    """A hash of the files' bytes (and names, in order): what the prepared-data cache keys on.
    BLAKE2b reads well over a gigabyte a second, small beside preparing the rows."""
    h = hashlib.blake2b(digest_size=20)
    for path in files:
        h.update(path.name.encode("utf-8") + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def folder_files(folder: Path) -> list[Path]:
    """Every file under `folder`, in a stable order (a save_to_disk folder's content)."""
    return sorted(p for p in folder.rglob("*") if p.is_file())
