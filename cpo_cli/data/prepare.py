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
from cpo_cli.data.alma import check_directions, expand_rows
from cpo_cli.data.columns import ColumnPlan, plan_columns
from cpo_cli.data.files import content_digest
from cpo_cli.data.formats import (
    BUILDING_FORMATS,
    detect_format,
    has_chat_template,
    require_chat_template,
)
from cpo_cli.data.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    mismatches,
    read_manifest,
    tokenizer_fingerprint,
    write_manifest,
)
from cpo_cli.data.pipeline import ID_COLUMNS, TEXT_COLUMNS, batches, run_pipeline
from cpo_cli.data.problems import UNREADABLE
from cpo_cli.data.report import PrepareReport, length_stats, no_usable_pairs
from cpo_cli.data.rows import RowOptions
from cpo_cli.data.sources import RawRows, as_source, is_local, load_rows, local_files
from cpo_cli.data.tokenize import LengthSettings
from cpo_cli.errors import DataError

if TYPE_CHECKING:
    from cpo_cli.recipe.schema import DataSource
    from cpo_cli.recipe.training import TrainingConfig

#: Rows whose shape decides the format and checks the column paths.
SAMPLE_ROWS = 20
#: How much of a dropped row an example shows.
PREVIEW_CHARS = 160


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

    Bad rows are dropped and counted by reason; when none is left the `DataError` says why
    (and with `strict` any drop is an error). A source that is already a prepared folder is
    loaded with `load_prepared` instead.
    """
    spec = as_source(source)
    folder = Path(spec.path).expanduser()
    if spec.format == "prepared" or (folder.is_dir() and (folder / MANIFEST_NAME).is_file()):
        prepared = load_prepared(folder, tokenizer, training, is_encoder_decoder=is_encoder_decoder)
        _check_strict(prepared.report, strict)
        return prepared
    settings = LengthSettings.from_training(training, is_encoder_decoder)
    tok_info = tokenizer_fingerprint(tokenizer)
    digest = _local_digest(spec)
    cache_folder = _cache_folder(cache_dir, spec, digest, settings, tok_info)
    if cache_folder is not None and (cache_folder / MANIFEST_NAME).is_file():
        cached = load_prepared(
            cache_folder, tokenizer, training, is_encoder_decoder=settings.is_encoder_decoder
        )
        _check_strict(cached.report, strict)
        cache.mark_used(cache_folder, local_files(spec))
        return cached
    prepared = _prepare(spec, tokenizer, settings, tok_info, training.dataset_num_proc, digest)
    _check_strict(prepared.report, strict)
    if cache_folder is not None:
        prepared.path = save_prepared(prepared, cache_folder)
        cache.mark_used(cache_folder, local_files(spec))
        cache.prune(cache_folder.parent, keep=cache_folder)
    return prepared


def _check_strict(report: PrepareReport, strict: bool) -> None:
    if strict and report.rows_dropped:
        raise DataError(
            f"{report.source}: {report.rows_dropped} of {report.rows_in} rows would be dropped "
            "(--strict)",
            details=[*report.drop_lines(), *(f"e.g. {x}" for x in report.example_lines())],
            hint="fix those rows, or run without --strict to drop them",
        )


def _prepare(
    spec: DataSource,
    tokenizer: Any,
    settings: LengthSettings,
    tok_info: dict[str, Any],
    num_proc: int | None,
    digest: str | None,
) -> PreparedData:
    raw = load_rows(spec)
    if not raw.rows:
        raise DataError(f"{spec.path}: the dataset has no rows")
    readable = [r for r in raw.rows[: SAMPLE_ROWS * 5] if UNREADABLE not in r][:SAMPLE_ROWS]
    mapping = {str(name): column for name, column in spec.columns.items()}
    plan = plan_columns(raw.columns, mapping, readable, spec.path)
    _refuse_unranked_answers(spec, plan, raw.columns)
    rows = [r if UNREADABLE in r else plan.extract(r) for r in raw.rows]
    sample = [r for r in rows[: SAMPLE_ROWS * 5] if UNREADABLE not in r][:SAMPLE_ROWS]
    fmt: str = spec.format
    if fmt == "auto" and sample:  # no readable row at all: the drop report says why
        fmt = detect_format(plan.canonical, sample, spec.path, raw.columns, readable)
    notes = [*raw.notes, *plan.notes]
    origins: list[int] | None = None
    if fmt == "alma_r":
        rows, origins, note = _alma_rows(rows, spec, plan, raw)
        notes.append(note)
    report = PrepareReport(
        source=spec.path, format=fmt, rows_in=len(rows), columns=plan.describe(), notes=notes
    )
    if settings.is_encoder_decoder and settings.max_completion_length is None:
        report.notes.append("max_completion_length is not set: answers are not truncated")
    if not settings.is_encoder_decoder and settings.max_length is None:
        report.notes.append("max_length is not set: pairs are not truncated")
    # Under `auto` each row is read by its own shape (a stray conversation in a text dataset is
    # checked as one, not rejected wholesale); a requested format is enforced per row.
    options = RowOptions(
        fmt=fmt if fmt in BUILDING_FORMATS else spec.format,
        text_as_chat=_text_as_chat(spec, plan, tokenizer, report.notes),
    )
    processed = _run(rows, spec, raw, report, origins, tokenizer, options, settings, num_proc)
    columns: dict[str, list[Any]] = {c: [] for c in (*TEXT_COLUMNS, *ID_COLUMNS)}
    for i, drop in enumerate(processed["drop"]):
        if drop:
            continue
        for c in columns:
            columns[c].append(processed[c][i])
        kind = processed["kind"][i]
        report.row_formats[kind] = report.row_formats.get(kind, 0) + 1
        report.truncated += processed["truncated"][i]
        report.boundary_merges += processed["merged"][i]
    if fmt in ("scored", "alma_r"):
        ties_best, ties_worst, missing = (
            sum(processed[c]) for c in ("ties_for_best", "ties_for_worst", "missing_scores")
        )
        report.notes.append(
            f"{fmt}: {ties_best} ties for the best score and {ties_worst} for the worst (the "
            f"first candidate is used), {missing} candidates without a score skipped"
        )
    _fill_stats(report, columns)
    if report.rows_kept == 0:
        raise no_usable_pairs(report, raw.columns, settings_hint=_length_hint(settings))
    dataset = _to_dataset(columns)
    identity = {**raw.identity, **({"content": digest} if digest else {})}
    manifest = _manifest(spec, identity, fmt, settings, tok_info, report)
    return PreparedData(dataset=dataset, report=report, manifest=manifest)


def _run(
    rows: list[dict[str, Any]],
    spec: DataSource,
    raw: RawRows,
    report: PrepareReport,
    origins: list[int] | None,
    tokenizer: Any,
    options: RowOptions,
    settings: LengthSettings,
    num_proc: int | None,
) -> dict[str, list[Any]]:
    """The pipeline over every row, drops recorded in `report`. The first batch runs alone:
    if none of its rows is usable the dataset is refused at once, not after every batch."""

    def describe(index: int) -> tuple[str, str]:
        raw_index = origins[index] if origins is not None else index
        return raw.locate(raw_index), _preview(raw.rows[raw_index])

    kwargs: dict[str, Any] = {
        "tokenizer": tokenizer,
        "options": options,
        "source": spec.path,
        "settings": settings,
        "max_row_bytes": spec.max_row_bytes,
    }
    first_end = batches(rows, spec.max_row_bytes)[0][1]
    first = run_pipeline(rows[:first_end], **kwargs)
    _record(report, first, 0, describe)
    if first_end < len(rows) and all(first["drop"]):
        raise no_usable_pairs(
            report, raw.columns, first_rows=first_end, settings_hint=_length_hint(settings)
        )
    rest = run_pipeline(rows[first_end:], num_proc=num_proc, **kwargs)
    _record(report, rest, first_end, describe)
    return {c: first[c] + rest[c] for c in first}


def _record(
    report: PrepareReport, processed: dict[str, list[Any]], offset: int, describe: Any
) -> None:
    for i, drop in enumerate(processed["drop"]):
        if drop:
            report.record_drop(drop, offset + i, processed["drop_detail"][i], describe)


#: Columns that rank two answer columns; mapping those answers to chosen/rejected ignores them.
_PAIRWISE_COLUMNS = {
    "overall_preference": ("response1", "response2"),
    "preference": ("response_a", "response_b"),
}


def _refuse_unranked_answers(spec: DataSource, plan: ColumnPlan, columns: list[str]) -> None:
    """`chosen=response1,rejected=response2` on pairwise data would keep every pair as written
    (inverting those where response 2 won, keeping ties): refused, naming the fix."""
    if spec.format == "pairwise":
        return
    mapped = {plan.paths.get("chosen", ("",))[0], plan.paths.get("rejected", ("",))[0]}
    for preference, answers in _PAIRWISE_COLUMNS.items():
        if preference in columns and mapped == set(answers):
            raise DataError(
                f"{spec.path}: chosen and rejected are read from {answers[0]} and {answers[1]}, "
                f"but the column {preference!r} says which of them is better (and marks ties)",
                hint="read it as pairwise data: --format pairwise (HelpSteer's column names "
                "need no --columns)",
            )


def _alma_rows(
    rows: list[dict[str, Any]], spec: DataSource, plan: ColumnPlan, raw: RawRows
) -> tuple[list[dict[str, Any]], list[int], str]:
    if "translation" not in plan.paths:
        raise DataError(
            f"{spec.path}: format alma_r reads a `translation` column, and the dataset has none",
            hint=f"map it with --columns translation=COLUMN (columns: {', '.join(raw.columns)})",
        )
    check_directions(spec.directions, spec.path)
    expanded, origins = expand_rows(rows, spec.directions, spec.scorer)
    which = ", ".join(spec.directions) if spec.directions else "both directions of each row"
    note = (
        f"alma_r: {len(rows)} rows -> {len(expanded)} candidate pairs ({which}; scorer "
        f"{spec.scorer})"
    )
    return expanded, origins, note


def _text_as_chat(spec: DataSource, plan: ColumnPlan, tokenizer: Any, notes: list[str]) -> bool:
    """Whether this source's text rows are rendered with the chat template (`chat_template`)."""
    has_system = "system" in plan.paths
    if spec.chat_template == "always":
        require_chat_template(tokenizer, spec.path)
        notes.append("text rows rendered with the chat template (chat_template: always)")
        return True
    if spec.chat_template == "auto" and has_system and has_chat_template(tokenizer):
        notes.append(
            "text rows rendered with the chat template: the source has a system prompt "
            "(chat_template: never keeps them as text)"
        )
        return True
    if has_system:
        why = "chat_template: never" if spec.chat_template == "never" else "no chat template"
        notes.append(f"system prompts joined before text prompts as text ({why})")
    return False


def _length_hint(settings: LengthSettings) -> dict[str, str]:
    return {
        "no_answer_room": f"prompts fill max_length ({settings.max_length}): raise max_length "
        f"or lower max_prompt_length ({settings.max_prompt_length})"
    }


def _preview(row: dict[str, Any]) -> str:
    if UNREADABLE in row:
        return ""
    text = json.dumps(row, ensure_ascii=False, default=str)
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 3] + "..."


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


def _describe(spec: DataSource) -> dict[str, Any]:
    """The source's settings that decide its prepared rows (not its mixture weight)."""
    return spec.model_dump(exclude={"weight"})


def _manifest(
    spec: DataSource,
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
        "source": {**_describe(spec), "identity": identity},
        "format": fmt,
        "rows": {"in": report.rows_in, "kept": report.rows_kept, "dropped": report.rows_dropped},
        "settings": settings.as_dict(),
        "tokenizer": tok_info,
        "columns": [*TEXT_COLUMNS, *ID_COLUMNS],
        "stats": report.to_dict(),
    }


def _local_digest(spec: DataSource) -> str | None:
    """A hash of a local source's bytes (None for Hub sources and for paths that are missing:
    loading them reports the problem)."""
    if not is_local(spec.path):
        return None
    try:
        return content_digest(local_files(spec))
    except (DataError, OSError):
        return None


def _cache_folder(
    cache_dir: str | Path | None,
    spec: DataSource,
    digest: str | None,
    settings: LengthSettings,
    tok_info: dict[str, Any],
) -> Path | None:
    """`cache_dir/<key>` for a local source; the key covers the bytes of its files (a content
    hash, so an edit is never missed, whatever it does to sizes and times), the options, the
    lengths and the tokenizer. Hub sources are not cached here (`datasets` caches them)."""
    from cpo_cli import __version__

    if cache_dir is None or digest is None:
        return None
    key = {
        "content": digest,
        "spec": _describe(spec),
        "settings": settings.as_dict(),
        "tokenizer": tok_info["fingerprint"],
        "format_version": FORMAT_VERSION,
        "cpo": __version__,  # a new release may tokenise differently: never reuse across them
    }
    name = Path(spec.path.rstrip("/*")).name or "data"
    key_hash = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:20]
    return Path(cache_dir).expanduser() / f"{_safe(name)}-{key_hash}"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]


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
