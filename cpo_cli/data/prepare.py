"""The preparation pipeline: raw rows -> checked text pairs -> token ids -> a `datasets.Dataset`
plus a report, saved (atomically) with a manifest, reloaded only under the same tokenizer and
lengths.

`prepare_dataset` is what `cpo train` runs in-process on a raw dataset (cached by fingerprint
when given a cache folder); `cpo prepare` runs it once and saves the result with
`save_prepared`; `load_prepared` reads such a folder back.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpo_cli.data import cache
from cpo_cli.data.formats import detect_format, rename_columns
from cpo_cli.data.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    mismatches,
    read_manifest,
    tokenizer_fingerprint,
    write_manifest,
)
from cpo_cli.data.pipeline import ID_COLUMNS, TEXT_COLUMNS, run_pipeline
from cpo_cli.data.report import PrepareReport, length_stats
from cpo_cli.data.sources import as_source, is_local, load_rows
from cpo_cli.data.tokenize import LengthSettings
from cpo_cli.errors import DataError

if TYPE_CHECKING:
    from cpo_cli.recipe.schema import DataSource
    from cpo_cli.recipe.training import TrainingConfig


@dataclass
class PreparedData:
    """A tokenised preference dataset (columns per docs/architecture.md) and its report."""

    dataset: Any
    report: PrepareReport
    manifest: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def prepare_dataset(
    source: DataSource | str | Path,
    tokenizer: Any,
    training: TrainingConfig,
    *,
    cache_dir: str | Path | None = None,
    strict: bool = False,
    is_encoder_decoder: bool | None = None,
) -> PreparedData:
    """Load, check, normalise and tokenise `source` (a recipe `DataSource` or a path).

    Bad rows are dropped and counted by reason; with `strict` any drop raises `DataError`.
    A source that is already a prepared folder is loaded with `load_prepared` instead.
    """
    source = as_source(source)
    folder = Path(source.path).expanduser()
    if source.format == "prepared" or (folder.is_dir() and (folder / MANIFEST_NAME).is_file()):
        prepared = load_prepared(folder, tokenizer, training, is_encoder_decoder=is_encoder_decoder)
        _check_strict(prepared.report, strict)
        return prepared
    settings = LengthSettings.from_training(training, is_encoder_decoder)
    tok_info = tokenizer_fingerprint(tokenizer)
    cache_folder = _cache_folder(cache_dir, source, settings, tok_info)
    if cache_folder is not None and (cache_folder / MANIFEST_NAME).is_file():
        cached = load_prepared(
            cache_folder, tokenizer, training, is_encoder_decoder=settings.is_encoder_decoder
        )
        _check_strict(cached.report, strict)
        cache.mark_used(cache_folder, Path(source.path).expanduser())
        return cached
    prepared = _prepare(source, tokenizer, settings, tok_info, training.dataset_num_proc)
    _check_strict(prepared.report, strict)
    if cache_folder is not None:
        prepared.path = save_prepared(prepared, cache_folder)
        cache.mark_used(cache_folder, Path(source.path).expanduser())
        cache.prune(cache_folder.parent, keep=cache_folder)
    return prepared


def _check_strict(report: PrepareReport, strict: bool) -> None:
    if strict and report.rows_dropped:
        raise DataError(
            f"{report.source}: {report.rows_dropped} of {report.rows_in} rows would be dropped "
            f"(--strict): " + "; ".join(report.drop_lines()),
            hint="fix those rows, or run without --strict to drop them",
        )


def _prepare(
    source: DataSource,
    tokenizer: Any,
    settings: LengthSettings,
    tok_info: dict[str, Any],
    num_proc: int | None,
) -> PreparedData:
    raw = load_rows(source)
    if not raw.rows:
        raise DataError(f"{source.path}: the dataset has no rows")
    renamed = rename_columns(raw.columns, source.columns, source.path)
    rows = [_canonical(row, renamed) for row in raw.rows]
    fmt: str = source.format
    if fmt == "auto":
        fmt = detect_format(list(renamed.values()), rows[:20], source.path)
    report = PrepareReport(source=source.path, format=fmt, rows_in=len(rows))
    if settings.is_encoder_decoder and settings.max_completion_length is None:
        report.notes.append("max_completion_length is not set: answers are not truncated")
    if not settings.is_encoder_decoder and settings.max_length is None:
        report.notes.append("max_length is not set: pairs are not truncated")

    # Under `auto` each row is read by its own shape (a stray conversation in a text dataset is
    # checked as one, not rejected wholesale); a requested format is enforced per row.
    processed = run_pipeline(
        rows,
        tokenizer=tokenizer,
        fmt="scored" if fmt == "scored" else source.format,
        source=source.path,
        settings=settings,
        num_proc=num_proc,
    )
    columns: dict[str, list[Any]] = {c: [] for c in (*TEXT_COLUMNS, *ID_COLUMNS)}
    for i, drop in enumerate(processed["drop"]):
        if drop:
            report.record_drop(drop, i)
            continue
        for c in columns:
            columns[c].append(processed[c][i])
        kind = processed["kind"][i]
        report.row_formats[kind] = report.row_formats.get(kind, 0) + 1
        report.truncated += processed["truncated"][i]
        report.boundary_merges += processed["merged"][i]
    if fmt == "scored":
        ties_best, ties_worst, missing = (
            sum(processed[c]) for c in ("ties_for_best", "ties_for_worst", "missing_scores")
        )
        report.notes.append(
            f"scored: {ties_best} ties for the best score and {ties_worst} for the worst (the "
            f"first candidate is used), {missing} candidates without a score skipped"
        )
    _fill_stats(report, columns)
    dataset = _to_dataset(columns)
    manifest = _manifest(source, raw.identity, fmt, settings, tok_info, report)
    return PreparedData(dataset=dataset, report=report, manifest=manifest)


def _canonical(row: Mapping[str, Any], renamed: Mapping[str, str]) -> dict[str, Any]:
    return {canonical: row.get(col) for col, canonical in renamed.items() if col in row}


def _fill_stats(report: PrepareReport, columns: Mapping[str, list[Any]]) -> None:
    report.rows_kept = len(columns["prompt"])
    lens = {c: [len(ids) for ids in columns[f"{c}_input_ids"]] for c in TEXT_COLUMNS}
    report.lengths = {c: length_stats(v) for c, v in lens.items()}
    prompt, chosen, rejected = (sum(v) for v in lens.values())
    # Tokens the model reads per epoch in the pair-rows layout (the prompt runs twice); the
    # answer tokens are the ones the loss sees.
    report.tokens_per_epoch = 2 * prompt + chosen + rejected
    report.answer_tokens_per_epoch = chosen + rejected


def _to_dataset(columns: Mapping[str, list[Any]]) -> Any:
    import datasets

    features = datasets.Features(
        {
            **{c: datasets.Value("string") for c in TEXT_COLUMNS},
            **{c: datasets.Sequence(datasets.Value("int32")) for c in ID_COLUMNS},
        }
    )
    return datasets.Dataset.from_dict(dict(columns), features=features)


def _manifest(
    source: DataSource,
    identity: dict[str, Any],
    fmt: str,
    settings: LengthSettings,
    tok_info: dict[str, Any],
    report: PrepareReport,
) -> dict[str, Any]:
    from cpo_cli import __version__

    return {
        "format_version": FORMAT_VERSION,
        "created_by": f"cpo {__version__}",
        "source": {**source.model_dump(mode="json"), "identity": identity},
        "format": fmt,
        "rows": {"in": report.rows_in, "kept": report.rows_kept, "dropped": report.rows_dropped},
        "settings": settings.as_dict(),
        "tokenizer": tok_info,
        "columns": [*TEXT_COLUMNS, *ID_COLUMNS],
        "stats": report.to_dict(),
    }


def _cache_folder(
    cache_dir: str | Path | None,
    source: DataSource,
    settings: LengthSettings,
    tok_info: dict[str, Any],
) -> Path | None:
    """`cache_dir/<key>` for a local source (the key covers the file's size and mtime, the
    options, the lengths and the tokenizer); Hub sources are not cached here (`datasets`
    caches their download)."""
    from cpo_cli import __version__

    if cache_dir is None or not is_local(source.path):
        return None
    path = Path(source.path).expanduser()
    if not path.exists():
        return None
    stat = path.stat()
    key = {
        "path": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "spec": source.model_dump(mode="json"),
        "settings": settings.as_dict(),
        "tokenizer": tok_info["fingerprint"],
        "format_version": FORMAT_VERSION,
        "cpo": __version__,  # a new release may tokenise differently: never reuse across them
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:20]
    return Path(cache_dir).expanduser() / f"{path.stem}-{digest}"


def save_prepared(prepared: PreparedData, output: str | Path) -> Path:
    """Write the dataset and `manifest.json` to `output` atomically: into a temporary sibling
    folder first, then renamed into place, so an interruption never leaves half a folder.

    An existing prepared folder is replaced; any other non-empty folder is refused.
    """
    out = Path(output).expanduser()
    replaceable = out.is_dir() and ((out / MANIFEST_NAME).is_file() or not any(out.iterdir()))
    if out.exists() and not replaceable:
        raise DataError(
            f"{out} exists and is not a prepared dataset; refusing to overwrite it",
            hint="choose a new --output folder or remove this one",
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    old: Path | None = None
    try:
        with _quiet_datasets():
            prepared.dataset.save_to_disk(str(tmp / "data"))
        write_manifest(tmp, prepared.manifest)
        tmp.chmod(0o755)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
            out.rename(old)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists():
            shutil.rmtree(old, ignore_errors=True)
    prepared.path = out
    return out


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No `datasets` progress bars for our quick saves and loads (the report says enough)."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def load_prepared(
    folder: str | Path,
    tokenizer: Any,
    training: TrainingConfig,
    *,
    is_encoder_decoder: bool | None = None,
) -> PreparedData:
    """A folder written by `save_prepared`, refused (naming each difference) if it was prepared
    with another tokenizer, chat template or length settings."""
    import datasets

    path = Path(folder).expanduser()
    manifest = read_manifest(path)
    settings = LengthSettings.from_training(training, is_encoder_decoder)
    problems = mismatches(manifest, tokenizer_fingerprint(tokenizer), settings.as_dict())
    if problems:
        raise DataError(
            f"{path} was prepared for a different setup: " + "; ".join(problems),
            hint="prepare the data again with this recipe (`cpo prepare`) or use the raw data",
        )
    try:
        with _quiet_datasets():
            dataset = datasets.load_from_disk(str(path / "data"))
    except Exception as exc:
        raise DataError(
            f"{path}: the prepared data cannot be read ({exc}); prepare it again"
        ) from exc
    report = PrepareReport.from_dict(
        manifest.get("stats", {"source": str(path), "format": "prepared"})
    )
    return PreparedData(dataset=dataset, report=report, manifest=manifest, path=path)
