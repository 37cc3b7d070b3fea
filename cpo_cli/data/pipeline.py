"""Rows -> checked, templated, tokenised pairs, batch by batch; in worker processes when the
recipe asks for `dataset_num_proc` and the dataset is big enough to pay for them.

Each batch is self-contained (its own normaliser), so the same function runs in-process and
inside `datasets.map(num_proc=N)`. Rows travel to workers as JSON text: a column of mixed
shapes (text here, a conversation there, a number by mistake) cannot be an Arrow column.

Memory stays bounded whatever the rows hold: a row whose text is over the source's
`max_row_bytes` is dropped (`too_long`) before it is templated or tokenised, and a batch closes
early once its rows hold `BATCH_BYTES` of text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from cpo_cli.data.formats import TextNormaliser
from cpo_cli.data.problems import RowProblem
from cpo_cli.data.rows import RowOptions
from cpo_cli.data.tokenize import LengthSettings, tokenize_pairs

#: Rows per batch: big enough for batched templating and the Rust batch encoder.
BATCH_SIZE = 1000
#: Text per batch: tokenising costs ~100-200 bytes of memory per byte of text (measured with
#: benchmarks/bench_prepare.py --huge-row-mb), so a batch of long rows closes early.
BATCH_BYTES = 8 * 1024 * 1024
#: Below this many rows, worker processes cost more than they save (starting one and importing
#: transformers takes seconds; one process prepares 5-10k rows/s).
MIN_ROWS_FOR_WORKERS = 20_000

TEXT_COLUMNS = ("prompt", "chosen", "rejected")
ID_COLUMNS = ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids")
#: Per row: the pair (empty when dropped), why it was dropped ("" if kept), its shape, and flags;
#: the scored-candidate counts are per batch (carried on the batch's first row).
OUTPUT_COLUMNS = (
    *TEXT_COLUMNS,
    *ID_COLUMNS,
    "drop",
    "drop_detail",
    "kind",
    "truncated",
    "merged",
    "ties_for_best",
    "ties_for_worst",
    "missing_scores",
)


def text_bytes(value: Any, limit: int) -> int:
    """UTF-8 bytes of the text in `value` (strings inside lists and mappings), counted only up
    to just past `limit`."""
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) if item.isascii() else len(item.encode("utf-8", "surrogatepass"))
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return total


def process_rows(
    rows: Sequence[Mapping[str, Any]],
    *,
    tokenizer: Any,
    options: RowOptions,
    source: str,
    settings: LengthSettings,
    max_row_bytes: int,
) -> dict[str, list[Any]]:
    """One batch of canonical rows -> `OUTPUT_COLUMNS` (one entry per input row)."""
    normalise = TextNormaliser(tokenizer, options, source)
    out: dict[str, list[Any]] = {c: [] for c in OUTPUT_COLUMNS}
    oversize = {
        i: RowProblem("too_long", f"over {max_row_bytes:,} bytes")
        for i, row in enumerate(rows)
        if text_bytes(row, max_row_bytes) > max_row_bytes
    }
    checked = normalise.many([{} if i in oversize else row for i, row in enumerate(rows)])
    for i, problem in oversize.items():
        checked[i] = problem
    kept = [i for i, r in enumerate(checked) if not isinstance(r, RowProblem)]
    pairs = [checked[i] for i in kept]
    tokens = tokenize_pairs(
        [p.prompt for p in pairs],  # type: ignore[union-attr]
        [p.chosen for p in pairs],  # type: ignore[union-attr]
        [p.rejected for p in pairs],  # type: ignore[union-attr]
        tokenizer,
        settings,
    )
    position = {row: k for k, row in enumerate(kept)}
    for i, result in enumerate(checked):
        k = position.get(i)
        if isinstance(result, RowProblem) or k is None:
            reason = result.reason if isinstance(result, RowProblem) else "wrong_format"
            detail = result.detail if isinstance(result, RowProblem) else ""
            _append(out, drop=reason, detail=detail)
            continue
        _append(
            out,
            drop=tokens.drop[k] or "",
            kind=result.kind,
            texts=(result.prompt, result.chosen, result.rejected),
            ids=(
                tokens.prompt_input_ids[k],
                tokens.chosen_input_ids[k],
                tokens.rejected_input_ids[k],
            ),
            truncated=tokens.truncated[k],
            merged=tokens.merged[k],
        )
    stats = normalise.scored
    if rows:
        out["ties_for_best"][0] = stats.ties_for_best
        out["ties_for_worst"][0] = stats.ties_for_worst
        out["missing_scores"][0] = stats.missing_scores
    return out


def _append(
    out: dict[str, list[Any]],
    *,
    drop: str,
    detail: str = "",
    kind: str = "",
    texts: tuple[str, str, str] = ("", "", ""),
    ids: tuple[list[int], list[int], list[int]] = ([], [], []),
    truncated: bool = False,
    merged: bool = False,
) -> None:
    for column, text in zip(TEXT_COLUMNS, texts, strict=True):
        out[column].append(text)
    for column, token_ids in zip(ID_COLUMNS, ids, strict=True):
        out[column].append(token_ids)
    out["drop"].append(drop)
    out["drop_detail"].append(detail)
    out["kind"].append(kind)
    out["truncated"].append(truncated)
    out["merged"].append(merged)
    out["ties_for_best"].append(0)
    out["ties_for_worst"].append(0)
    out["missing_scores"].append(0)


def _process_json_batch(batch: dict[str, list[Any]], **kwargs: Any) -> dict[str, list[Any]]:
    rows = [json.loads(r) for r in batch["row"]]
    total: dict[str, list[Any]] = {c: [] for c in OUTPUT_COLUMNS}
    for start, end in batches(rows, kwargs["max_row_bytes"]):
        for column, values in process_rows(rows[start:end], **kwargs).items():
            total[column].extend(values)
    return total


def batches(rows: Sequence[Mapping[str, Any]], max_row_bytes: int) -> list[tuple[int, int]]:
    """(start, end) of each batch: at most `BATCH_SIZE` rows and, past its first row, at most
    `BATCH_BYTES` of text (a row over `max_row_bytes` counts as nothing: it is dropped)."""
    out = []
    start, size = 0, 0
    for i, row in enumerate(rows):
        n = text_bytes(row, max_row_bytes)
        n = 0 if n > max_row_bytes else n
        if i > start and (i - start >= BATCH_SIZE or size + n > BATCH_BYTES):
            out.append((start, i))
            start, size = i, 0
        size += n
    if start < len(rows):
        out.append((start, len(rows)))
    return out


def run_pipeline(
    rows: Sequence[Mapping[str, Any]],
    *,
    tokenizer: Any,
    options: RowOptions,
    source: str,
    settings: LengthSettings,
    max_row_bytes: int,
    num_proc: int | None = None,
) -> dict[str, list[Any]]:
    """Every row through `process_rows`, in batches; in `num_proc` workers for big datasets."""
    kwargs = {
        "tokenizer": tokenizer,
        "options": options,
        "source": source,
        "settings": settings,
        "max_row_bytes": max_row_bytes,
    }
    if num_proc and num_proc > 1 and len(rows) >= MIN_ROWS_FOR_WORKERS:
        return _in_workers(rows, num_proc, kwargs)
    total: dict[str, list[Any]] = {c: [] for c in OUTPUT_COLUMNS}
    for start, end in batches(rows, max_row_bytes):
        part = process_rows(rows[start:end], **kwargs)
        for column, values in part.items():
            total[column].extend(values)
    return total


def _in_workers(
    rows: Sequence[Mapping[str, Any]], num_proc: int, kwargs: dict[str, Any]
) -> dict[str, list[Any]]:
    import datasets

    encoded = datasets.Dataset.from_dict({"row": [json.dumps(r, default=str) for r in rows]})
    mapped = encoded.map(
        _process_json_batch,
        batched=True,
        batch_size=BATCH_SIZE,
        num_proc=num_proc,
        remove_columns=["row"],
        fn_kwargs=kwargs,
        load_from_cache_file=False,
        desc="preparing",
    )
    # to_dict gives Python lists; `mapped[column]` would be a lazy column, slow to index per row
    columns: dict[str, list[Any]] = mapped.to_dict()
    return {column: columns[column] for column in OUTPUT_COLUMNS}
