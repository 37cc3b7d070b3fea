"""Loading a raw preference dataset from wherever it lives, as Python rows.

Local JSON/JSONL files are read with the standard library so that rows of mixed shape (a number
where text should be, a conversation in a text column) reach the checker instead of failing
Arrow's schema inference; Parquet/CSV, `save_to_disk` folders and Hub names go through
`datasets`. Every failure is a `DataError` naming the file or dataset.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpo_cli.errors import DataError, first_line

if TYPE_CHECKING:
    from cpo_cli.recipe.schema import DataSource

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def as_source(source: DataSource | str | os.PathLike[str]) -> DataSource:
    """A recipe `DataSource`; a plain path or Hub name reads its `train` split as `auto`."""
    from cpo_cli.recipe.schema import DataSource

    if isinstance(source, DataSource):
        return source
    return DataSource(path=str(source))


@dataclass
class RawRows:
    """The rows of a dataset as Python dicts, with its column names and a stable identity."""

    rows: list[dict[str, Any]]
    columns: list[str]
    identity: dict[str, Any]

    def __len__(self) -> int:
        return len(self.rows)


def is_local(path: str) -> bool:
    """A path the user meant as local: it exists, or it looks like a file path, not a Hub id."""
    p = Path(path).expanduser()
    if p.exists():
        return True
    return (
        path.startswith((".", "/", "~"))
        or path.endswith(LOCAL_SUFFIXES)
        or os.sep in path.strip("/").replace("/", "", 1)  # hub ids have exactly one slash
    )


def load_rows(source: DataSource) -> RawRows:
    """Every row of the source (at most `max_rows`), or a `DataError` saying what is wrong."""
    if is_local(source.path):
        raw = _load_local(Path(source.path).expanduser(), source)
    else:
        raw = _load_hub(source)
    if source.max_rows is not None and len(raw.rows) > source.max_rows:
        raw.rows = raw.rows[: source.max_rows]
    return raw


def _file_identity(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _load_local(path: Path, source: DataSource) -> RawRows:
    if not path.exists():
        raise DataError(
            f"dataset file not found: {path}",
            hint="check the path (relative paths are read from the current directory)",
        )
    if path.is_dir():
        return _load_saved(path, source)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = list(itertools.islice(_read_jsonl(path), source.max_rows))
    elif suffix == ".json":
        rows = _read_json(path)
    elif suffix in (".parquet", ".csv"):
        rows = _read_with_datasets(path, suffix)
    else:
        raise DataError(
            f"{path}: unsupported file type {suffix or '(none)'}",
            hint=f"use one of {', '.join(LOCAL_SUFFIXES)} or a folder saved with save_to_disk",
        )
    return RawRows(rows, _columns_of(rows), _file_identity(path))


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})",
                    hint="each line of a .jsonl file must be one JSON object",
                ) from exc
            yield value if isinstance(value, dict) else {"__not_an_object__": value}


def _read_json(path: Path) -> list[dict[str, Any]]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        if exc.lineno > 1:  # maybe JSON lines under a .json name
            try:
                return list(_read_jsonl(path))
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


def _read_with_datasets(path: Path, suffix: str) -> list[dict[str, Any]]:
    import datasets

    try:
        if suffix == ".parquet":
            ds = datasets.Dataset.from_parquet(str(path))
        else:
            ds = datasets.Dataset.from_csv(str(path))
    except Exception as exc:  # pyarrow/pandas raise many types for unreadable files
        raise DataError(f"{path}: cannot read this {suffix[1:]} file: {exc}") from exc
    return _dataset_rows(ds)


def _dataset_rows(ds: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = ds.to_list()
    return rows


def _load_saved(path: Path, source: DataSource) -> RawRows:
    import datasets

    if not ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        raise DataError(
            f"{path} is a folder but not a dataset saved with save_to_disk",
            hint="point at a data file (.jsonl/.json/.parquet/.csv) or a save_to_disk folder",
        )
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DataError(f"{path}: cannot load this saved dataset: {exc}") from exc
    ds = _pick_split(loaded, source.split, str(path))
    identity = {"path": str(path.resolve()), "fingerprint": getattr(ds, "_fingerprint", None)}
    return RawRows(_dataset_rows(ds), list(ds.column_names), identity)


def _pick_split(loaded: Any, split: str, name: str) -> Any:
    import datasets

    if not isinstance(loaded, datasets.DatasetDict):
        return loaded
    if split not in loaded:
        raise DataError(
            f"{name}: no split {split!r}",
            hint=f"choose one of: {', '.join(loaded)} (--split)",
        )
    return loaded[split]


def _load_hub(source: DataSource) -> RawRows:
    import datasets

    split = source.split
    # `train[:N]` makes `datasets` read only the rows asked for
    wanted = f"{split}[:{source.max_rows}]" if source.max_rows is not None else split
    from huggingface_hub import constants

    offline = constants.is_offline_mode()
    if not offline:
        _ask_hub_first(source)
    try:
        ds = datasets.load_dataset(
            source.path, source.subset, split=wanted, revision=source.revision
        )
    except Exception as exc:  # network, auth, missing config/split: all user-fixable
        reason = first_line(exc)
        where = f"{source.path!r}" + (f" (subset {source.subset!r})" if source.subset else "")
        hint = (
            "the Hub is switched off (HF_HUB_OFFLINE=1) and the dataset is not in the local "
            "cache: give a local file or folder instead, or go online"
            if offline
            else "check the dataset name, --subset, --split and --revision, your network, and "
            "your token for private datasets; or give a local file"
        )
        raise DataError(
            f"cannot load dataset {where} split {split!r}: {reason}", hint=hint
        ) from exc
    if isinstance(ds, datasets.DatasetDict):  # defensive: split=... should return one split
        ds = _pick_split(ds, split, source.path)
    identity = {
        "hub": source.path,
        "subset": source.subset,
        "split": split,
        "revision": source.revision,
        "fingerprint": getattr(ds, "_fingerprint", None),
    }
    return RawRows(_dataset_rows(ds), list(ds.column_names), identity)


def _ask_hub_first(source: DataSource) -> None:
    """One request, no retries, before `datasets` makes its own: a missing, private or gated
    dataset, a missing revision or an unreachable Hub becomes a clear error in well under a
    second, instead of ~25 s of retries ending in a vague one. An unreachable Hub is not an
    error when the dataset is already in the local Hub cache (`datasets` may still load it)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    name = source.path
    try:
        HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None).dataset_info(
            name, revision=source.revision, timeout=10
        )
    except GatedRepoError as exc:
        raise DataError(
            f"dataset {name!r} is gated on the Hugging Face Hub",
            hint=f"accept its terms at https://huggingface.co/datasets/{name}, then log in "
            "(hf auth login) or set HF_TOKEN",
        ) from exc
    except RepositoryNotFoundError as exc:
        raise DataError(
            f"no dataset {name!r} on the Hugging Face Hub (or it is private)",
            hint="check the name (owner/dataset); for a private dataset log in (hf auth login) "
            "or set HF_TOKEN; or give a local file",
        ) from exc
    except RevisionNotFoundError as exc:
        raise DataError(
            f"dataset {name!r} has no revision {source.revision!r} on the Hub",
            hint="check --revision (a branch, tag or commit of the dataset repository)",
        ) from exc
    except HfHubHTTPError:
        return  # another HTTP answer (rate limit, server error): let `datasets` try and report
    except Exception as exc:  # no answer at all: DNS, refused connection, timeout, proxy
        if _in_local_hub_cache(name):
            return
        reason = first_line(exc)
        raise DataError(
            f"cannot reach the Hugging Face Hub to load dataset {name!r}: {reason}",
            hint="check the network or proxy (HF_ENDPOINT); to use a dataset downloaded "
            "before, set HF_HUB_OFFLINE=1; or give a local file",
        ) from exc


def _in_local_hub_cache(name: str) -> bool:
    from huggingface_hub import constants

    folder = Path(constants.HF_HUB_CACHE) / f"datasets--{name.replace('/', '--')}"
    return folder.is_dir()


def _columns_of(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)
