"""What preparation did to a dataset: rows in/kept/dropped by reason (with the specific detail
and example rows), token-length percentiles, truncation share and tokens per epoch. The data
layer returns it; the CLI prints it. When nothing is usable, `no_usable_pairs` builds the one
error that says why and what to try."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cpo_cli.data.columns import guess_column
from cpo_cli.data.problems import DROP_REASONS
from cpo_cli.errors import DataError

#: How many offending row indices each reason keeps, to show the user where to look.
EXAMPLES_PER_REASON = 5
#: How many different details each reason keeps counts for.
DETAILS_PER_REASON = 5
#: Example rows (with their reason) an error or report shows.
EXAMPLE_ROWS = 3
PERCENTILES = (50, 90, 99)


@dataclass
class LengthStats:
    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    max: int = 0
    mean: float = 0.0


@dataclass
class PrepareReport:
    source: str
    format: str
    rows_in: int = 0
    rows_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    dropped_rows: dict[str, list[int]] = field(default_factory=dict)
    #: reason -> specific detail -> count (e.g. wrong_format -> "prompt is text in a ...")
    drop_details: dict[str, dict[str, int]] = field(default_factory=dict)
    #: the first dropped rows: {row, where, reason, detail, preview}
    examples: list[dict[str, Any]] = field(default_factory=list)
    row_formats: dict[str, int] = field(default_factory=dict)
    #: canonical name -> the dataset column (or dotted path) it was read from
    columns: dict[str, str] = field(default_factory=dict)
    lengths: dict[str, LengthStats] = field(default_factory=dict)
    truncated: int = 0
    boundary_merges: int = 0
    tokens_per_epoch: int = 0
    answer_tokens_per_epoch: int = 0
    notes: list[str] = field(default_factory=list)
    #: a mixture's sources: {source, format, rows_in, rows_kept, rows_dropped, weight, used}
    sources: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rows_dropped(self) -> int:
        return sum(self.dropped.values())

    @property
    def truncated_share(self) -> float:
        return self.truncated / self.rows_kept if self.rows_kept else 0.0

    def record_drop(
        self,
        reason: str,
        row: int,
        detail: str = "",
        describe: Callable[[int], tuple[str, str]] | None = None,
    ) -> None:
        """Count a dropped row; `describe(row)` gives (where, preview) for the first examples."""
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        examples = self.dropped_rows.setdefault(reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(row)
        if detail:
            details = self.drop_details.setdefault(reason, {})
            if detail in details or len(details) < DETAILS_PER_REASON:
                details[detail] = details.get(detail, 0) + 1
        if len(self.examples) < EXAMPLE_ROWS:
            where, preview = describe(row) if describe is not None else (f"row {row}", "")
            self.examples.append(
                {"row": row, "where": where, "reason": reason, "detail": detail, "preview": preview}
            )

    def drop_lines(self) -> list[str]:
        """One line per reason: count, meaning, the specific details, first row indices."""
        lines = []
        for reason in sorted(self.dropped, key=_reason_order):
            rows = ", ".join(str(r) for r in self.dropped_rows.get(reason, []))
            more = ", ..." if self.dropped[reason] > len(self.dropped_rows.get(reason, [])) else ""
            details = self.drop_details.get(reason, {})
            said = "; ".join(f"{d}: {n}" for d, n in sorted(details.items(), key=lambda x: -x[1]))
            lines.append(
                f"{reason}: {self.dropped[reason]} ({DROP_REASONS.get(reason, reason)}"
                + (f" — {said}" if said else "")
                + f"; rows {rows}{more})"
            )
        return lines

    def example_lines(self) -> list[str]:
        out = []
        for ex in self.examples:
            what = ex["reason"] + (f" ({ex['detail']})" if ex.get("detail") else "")
            preview = f": {ex['preview']}" if ex.get("preview") else ""
            out.append(f"row {ex['row']} ({ex['where']}) {what}{preview}")
        return out

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dropped"] = {k: self.dropped[k] for k in sorted(self.dropped, key=_reason_order)}
        out["rows_dropped"] = self.rows_dropped
        out["truncated_share"] = round(self.truncated_share, 6)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrepareReport:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["lengths"] = {k: LengthStats(**v) for k, v in known.get("lengths", {}).items()}
        return cls(**known)

    def table(self) -> Any:
        """A rich renderable summary (rich is imported here, not by the data layer's callers)."""
        from rich.table import Table

        summary = Table(title=f"cpo prepare: {self.source}", show_header=False, box=None)
        summary.add_column("what", style="bold")
        summary.add_column("value")
        formats = ", ".join(f"{k} {v}" for k, v in sorted(self.row_formats.items()))
        summary.add_row("format", f"{self.format}" + (f" (rows: {formats})" if formats else ""))
        if self.columns:
            summary.add_row(
                "columns",
                ", ".join(f"{k} <- {v}" for k, v in self.columns.items() if k != v)
                or "canonical names",
            )
        for src in self.sources:
            summary.add_row(
                "source",
                f"{src['source']}: {src['rows_kept']} of {src['rows_in']} kept"
                + (
                    f", weight {src['weight']:g} -> {src['used']} pairs"
                    if src["weight"] != 1
                    else ""
                ),
            )
        summary.add_row("rows in", str(self.rows_in))
        summary.add_row("rows kept", str(self.rows_kept))
        summary.add_row("rows dropped", str(self.rows_dropped))
        for line in self.drop_lines():
            summary.add_row("", f"  {line}")
        for line in self.example_lines():
            summary.add_row("", f"  e.g. {line}")
        summary.add_row(
            "truncated", f"{self.truncated} ({100 * self.truncated_share:.1f}% of kept rows)"
        )
        summary.add_row("boundary merges", str(self.boundary_merges))
        summary.add_row("tokens per epoch", f"{self.tokens_per_epoch:,}")
        for note in self.notes:
            summary.add_row("note", note)
        lengths = Table(title="token lengths (kept rows)")
        lengths.add_column("column")
        for name in ("p50", "p90", "p99", "max", "mean"):
            lengths.add_column(name, justify="right")
        for column, st in self.lengths.items():
            lengths.add_row(
                column, f"{st.p50:g}", f"{st.p90:g}", f"{st.p99:g}", str(st.max), f"{st.mean:.1f}"
            )
        from rich.console import Group

        return Group(summary, lengths)


def _reason_order(reason: str) -> int:
    order = list(DROP_REASONS)
    return order.index(reason) if reason in order else len(order)


def no_usable_pairs(
    report: PrepareReport,
    dataset_columns: Sequence[str],
    *,
    first_rows: int | None = None,
    settings_hint: Mapping[str, str] | None = None,
) -> DataError:
    """The error when every row (or every row of the first batch) was dropped: the counts per
    specific reason, example rows, the dataset's own columns, and the likely fix."""
    what = (
        f"the first {first_rows} rows were all dropped"
        if first_rows is not None
        else f"all {report.rows_in} rows were dropped"
    )
    details = [*report.drop_lines()]
    details += [f"e.g. {line}" for line in report.example_lines()]
    details.append(f"the dataset's columns: {', '.join(dataset_columns) or '(none)'}")
    if report.columns:
        details.append("read as: " + ", ".join(f"{k} <- {v}" for k, v in report.columns.items()))
    return DataError(
        f"{report.source}: no usable pairs ({report.format} format): {what}",
        details=details,
        hint=likely_fix(report, dataset_columns, settings_hint or {}),
    )


def likely_fix(
    report: PrepareReport, dataset_columns: Sequence[str], settings_hint: Mapping[str, str]
) -> str:
    """What to try, from the dataset's columns and the most common reason."""
    if not report.dropped:
        return "check the dataset"
    cols = set(dataset_columns)
    pairwise = {"context", "response1", "response2"} <= cols or {"response_a", "response_b"} <= cols
    if pairwise and report.format != "pairwise":
        return "this looks like pairwise data: --format pairwise"
    if "translation" in cols and report.format != "alma_r":
        return "this looks like ALMA-R data: --format alma_r --directions de-en,en-de"
    top = max(report.dropped, key=lambda r: report.dropped[r])
    if top in ("missing_field", "prompt_mismatch"):
        unmapped = [c for c in ("prompt", "chosen", "rejected") if c not in report.columns]
        if unmapped:
            named = [f"{c}={guess_column(c, dataset_columns) or 'COLUMN'}" for c in unmapped]
            return "name the columns: --columns " + ",".join(named)
    if top == "wrong_format" and report.format != "auto":
        return f"the rows do not have the shape of --format {report.format}: try --format auto"
    if top in settings_hint:
        return settings_hint[top]
    return _FIXES.get(top, "see the reasons above")


_FIXES = {
    "bad_encoding": "the rows are not UTF-8 text: if the file is binary or compressed, name it "
    "for what it is (.parquet, .jsonl.gz, ...); if it is text in another encoding, convert it "
    "(iconv -f latin1 -t utf-8 in.jsonl > out.jsonl)",
    "missing_field": "some rows lack a field the format needs: check --columns and --format",
    "not_a_string": "a mapped column does not hold text or messages: check --columns",
    "wrong_format": "check which columns hold the prompt and the answers (--columns)",
    "bad_transcript": "the transcripts are not Human:/Assistant: dialogues ending with an answer",
    "other_direction": "choose directions the rows have: --directions (e.g. de-en,en-de)",
    "too_long": "raise the byte cap if these rows are wanted: --max-row-bytes",
    "no_answer_room": "raise max_length or lower max_prompt_length",
    "tie": "every row is a tie (preference 0): check --columns preference=COLUMN",
    "tied_scores": "every row's candidates score the same: check --columns scores=COLUMN",
    "too_few_scored": "check --columns candidates=COLUMN,scores=COLUMN",
    "identical_answers": "chosen and rejected hold the same text: check --columns",
    "prompt_mismatch": "chosen and rejected share no prompt: name it with --columns prompt=COLUMN",
    "wrong_role": "the chat template refuses these conversations: check the roles, or set "
    "model.chat_template",
}


def length_stats(lengths: Sequence[int]) -> LengthStats:
    """Percentiles (linear interpolation, as numpy's default) of token counts."""
    if not lengths:
        return LengthStats()
    import numpy as np

    arr = np.asarray(lengths, dtype=np.int64)
    p50, p90, p99 = (round(float(v), 2) for v in np.percentile(arr, PERCENTILES))
    return LengthStats(p50, p90, p99, int(arr.max()), round(float(arr.mean()), 2))
