"""A list of sources prepared as one dataset, as alignment-handbook's `dataset_mixer` and
LLaMA-Factory's mixing let a recipe combine datasets.

Each source is prepared on its own (its own format, columns, cache entry and report). Its
`weight` then says how many of its usable pairs the mixture takes, as a multiple: below 1 a
seeded random subset (alignment-handbook's fraction), above 1 the source repeated (whole copies
plus a seeded random remainder). The pairs are concatenated; the training sampler shuffles them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpo_cli.data.pipeline import ID_COLUMNS, TEXT_COLUMNS
from cpo_cli.data.prepare import PreparedData, prepare_dataset
from cpo_cli.data.report import PrepareReport, length_stats

if TYPE_CHECKING:
    from cpo_cli.recipe.schema import DataSource
    from cpo_cli.recipe.training import TrainingConfig


def mixture_indices(rows: int, weight: float, seed: int) -> list[int]:
    """Which of a source's `rows` pairs a mixture takes: `round(weight * rows)` of them."""
    target = round(weight * rows)
    whole, rest = divmod(target, rows) if rows else (0, 0)
    picked = [i for _ in range(whole) for i in range(rows)]
    picked += sorted(random.Random(seed).sample(range(rows), rest))
    return picked


def prepare_mixture(
    sources: Sequence[DataSource],
    tokenizer: Any,
    training: TrainingConfig,
    *,
    seed: int,
    cache_dir: str | Path | None = None,
    strict: bool = False,
    is_encoder_decoder: bool | None = None,
) -> tuple[PreparedData, list[PreparedData]]:
    """The mixture of `sources` and each source's own preparation (for per-source reports).
    A single source of weight 1 is simply that source."""
    parts = [
        prepare_dataset(
            s,
            tokenizer,
            training,
            cache_dir=cache_dir,
            strict=strict,
            is_encoder_decoder=is_encoder_decoder,
        )
        for s in sources
    ]
    if len(parts) == 1 and sources[0].weight == 1:
        return parts[0], parts
    import datasets

    keep = [*TEXT_COLUMNS, *ID_COLUMNS]
    chosen = []
    for index, (source, part) in enumerate(zip(sources, parts, strict=True)):
        picked = mixture_indices(len(part.dataset), source.weight, seed + index)
        chosen.append(part.dataset.select_columns(keep).select(picked))
    dataset = datasets.concatenate_datasets(chosen)
    report = _mixture_report(sources, parts, [len(c) for c in chosen], dataset)
    return PreparedData(dataset=dataset, report=report), parts


def _mixture_report(
    sources: Sequence[DataSource],
    parts: Sequence[PreparedData],
    used: Sequence[int],
    dataset: Any,
) -> PrepareReport:
    report = PrepareReport(source=" + ".join(s.path for s in sources), format="mixture")
    for source, part, n in zip(sources, parts, used, strict=True):
        r = part.report
        report.rows_in += r.rows_in
        for reason, count in r.dropped.items():
            report.dropped[reason] = report.dropped.get(reason, 0) + count
        for kind, count in r.row_formats.items():
            report.row_formats[kind] = report.row_formats.get(kind, 0) + count
        report.truncated += r.truncated
        report.boundary_merges += r.boundary_merges
        report.sources.append(
            {
                "source": source.path,
                "format": r.format,
                "rows_in": r.rows_in,
                "rows_kept": r.rows_kept,
                "rows_dropped": r.rows_dropped,
                "weight": source.weight,
                "used": n,
            }
        )
    report.rows_kept = len(dataset)
    lens = {c: [len(ids) for ids in dataset[f"{c}_input_ids"]] for c in TEXT_COLUMNS}
    report.lengths = {c: length_stats(v) for c, v in lens.items()}
    prompt, chosen, rejected = (sum(v) for v in lens.values())
    report.tokens_per_epoch = 2 * prompt + chosen + rejected
    report.answer_tokens_per_epoch = chosen + rejected
    report.notes.append(
        f"mixture of {len(sources)} sources: {len(dataset)} pairs "
        "(rows kept counts the pairs used after weights)"
    )
    return report
