"""Loading a raw preference dataset from wherever it lives, as Python rows.

Local files, globs and Hub-snapshot folders are resolved and read by `cpo_cli.data.files`;
`save_to_disk` folders and Hub names go through `datasets`. Every failure is a `DataError`
naming the file or dataset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpo_cli.data.files import (
    ROW_FILE_TYPES,
    FileRows,
    content_digest,
    folder_files,
    has_wildcards,
    read_files,
    resolve_files,
)
from cpo_cli.data.problems import UNREADABLE
from cpo_cli.errors import DataError, first_line

if TYPE_CHECKING:
    from cpo_cli.recipe.schema import DataSource

_LOCAL_ENDINGS = tuple(
    f"{t}{c}" for t in ROW_FILE_TYPES for c in ("", ".gz", ".bz2", ".zst", ".xz")
)


def as_source(source: DataSource | str | os.PathLike[str]) -> DataSource:
    """A recipe `DataSource`; a plain path or Hub name reads its `train` split as `auto`."""
    from cpo_cli.recipe.schema import DataSource

    if isinstance(source, DataSource):
        return source
    return DataSource(path=str(source))


@dataclass
class RawRows:
    """The rows of a dataset as Python dicts, its column names, a stable identity (a content
    hash for local files) and where each row came from."""

    rows: list[dict[str, Any]]
    columns: list[str]
    identity: dict[str, Any]
    files: list[Path] = field(default_factory=list)
    where: FileRows | None = None
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def locate(self, index: int) -> str:
        return self.where.locate(index) if self.where is not None else f"row {index}"


def is_local(path: str) -> bool:
    """A path the user meant as local: it exists, or it looks like a file path, not a Hub id."""
    p = Path(path).expanduser()
    if p.exists():
        return True
    return (
        path.startswith((".", "/", "~"))
        or path.lower().endswith(_LOCAL_ENDINGS)
        or has_wildcards(path)
        or os.sep in path.strip("/").replace("/", "", 1)  # hub ids have exactly one slash
    )


def load_rows(source: DataSource) -> RawRows:
    """Every row of the source (at most `max_rows`), or a `DataError` saying what is wrong."""
    raw = _load_local(source) if is_local(source.path) else _load_hub(source)
    if source.max_rows is not None and len(raw.rows) > source.max_rows:
        raw.rows = raw.rows[: source.max_rows]
    return raw


def local_files(source: DataSource) -> list[Path]:
    """The files whose bytes make up a local source (what the cache's content hash covers)."""
    path = Path(source.path).expanduser()
    if not has_wildcards(source.path) and path.is_dir() and _is_saved(path):
        return folder_files(path)
    return resolve_files(source.path, source.subset, source.split)[0]


def _is_saved(path: Path) -> bool:
    return (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()


def _load_local(source: DataSource) -> RawRows:
    path = Path(source.path).expanduser()
    if not has_wildcards(source.path) and path.is_dir() and _is_saved(path):
        return _load_saved(path, source)
    files, notes = resolve_files(source.path, source.subset, source.split)
    read = read_files(files, source.max_rows)
    identity = {
        "files": [str(f.resolve()) for f in files],
        "content": content_digest(files),
    }
    return RawRows(read.rows, _columns_of(read.rows), identity, files, read, notes)


def _dataset_rows(ds: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = ds.to_list()
    return rows


def _load_saved(path: Path, spec: DataSource) -> RawRows:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DataError(f"{path}: cannot load this saved dataset: {exc}") from exc
    ds = _pick_split(loaded, spec, str(path))
    files = folder_files(path)
    identity = {"path": str(path.resolve()), "content": content_digest(files)}
    return RawRows(_dataset_rows(ds), list(ds.column_names), identity, files)


def _pick_split(loaded: Any, spec: DataSource, name: str) -> Any:
    import datasets

    if not isinstance(loaded, datasets.DatasetDict):
        return loaded
    split = spec.split
    if split not in loaded:
        raise DataError(
            f"{name}: no split {split!r}",
            hint=f"choose one of: {', '.join(loaded)} (--split)",
        )
    return loaded[split]


def _load_hub(spec: DataSource) -> RawRows:
    import datasets

    split = spec.split
    # `train[:N]` makes `datasets` read only the rows asked for
    wanted = f"{split}[:{spec.max_rows}]" if spec.max_rows is not None else split
    from huggingface_hub import constants

    offline = constants.is_offline_mode()
    if not offline:
        _ask_hub_first(spec)
    try:
        ds = _load_hub_split(spec, wanted)
    except Exception as exc:  # network, auth, missing config/split: all user-fixable
        reason = first_line(exc)
        where = f"{spec.path!r}" + (f" (subset {spec.subset!r})" if spec.subset else "")
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
        ds = _pick_split(ds, spec, spec.path)
    identity = {
        "hub": spec.path,
        "subset": spec.subset,
        "split": split,
        "revision": spec.revision,
        "fingerprint": getattr(ds, "_fingerprint", None),
    }
    return RawRows(_dataset_rows(ds), list(ds.column_names), identity)


def _load_hub_split(spec: DataSource, wanted: str) -> Any:
    """`load_dataset` with `subset` as the config name; a repository without such a config
    (Anthropic/hh-rlhf keeps its parts in folders) reads the folder of that name instead, as a
    local snapshot's `--subset` does."""
    import datasets

    try:
        return datasets.load_dataset(spec.path, spec.subset, split=wanted, revision=spec.revision)
    except ValueError as exc:
        if spec.subset is None or "BuilderConfig" not in str(exc):
            raise
    return datasets.load_dataset(
        spec.path, data_dir=spec.subset, split=wanted, revision=spec.revision
    )


def _ask_hub_first(spec: DataSource) -> None:
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

    name = spec.path
    try:
        HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None).dataset_info(
            name, revision=spec.revision, timeout=10
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
            f"dataset {name!r} has no revision {spec.revision!r} on the Hub",
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
    seen.pop(UNREADABLE, None)
    return list(seen)
