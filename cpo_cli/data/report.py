"""What preparation did to a dataset: rows in/kept/dropped by reason, token-length percentiles,
truncation share and tokens per epoch. The data layer returns it; the CLI prints it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cpo_cli.data.formats import DROP_REASONS

#: How many offending row indices each reason keeps, to show the user where to look.
EXAMPLES_PER_REASON = 5
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
    row_formats: dict[str, int] = field(default_factory=dict)
    lengths: dict[str, LengthStats] = field(default_factory=dict)
    truncated: int = 0
    boundary_merges: int = 0
    tokens_per_epoch: int = 0
    answer_tokens_per_epoch: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def rows_dropped(self) -> int:
        return sum(self.dropped.values())

    @property
    def truncated_share(self) -> float:
        return self.truncated / self.rows_kept if self.rows_kept else 0.0

    def record_drop(self, reason: str, row: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        examples = self.dropped_rows.setdefault(reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(row)

    def drop_lines(self) -> list[str]:
        """One line per reason: count, meaning, first row indices (0-based)."""
        lines = []
        for reason in sorted(self.dropped, key=_reason_order):
            rows = ", ".join(str(r) for r in self.dropped_rows.get(reason, []))
            more = ", ..." if self.dropped[reason] > len(self.dropped_rows.get(reason, [])) else ""
            lines.append(
                f"{reason}: {self.dropped[reason]} ({DROP_REASONS.get(reason, reason)}; "
                f"rows {rows}{more})"
            )
        return lines

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
        summary.add_row("rows in", str(self.rows_in))
        summary.add_row("rows kept", str(self.rows_kept))
        summary.add_row("rows dropped", str(self.rows_dropped))
        for line in self.drop_lines():
            summary.add_row("", f"  {line}")
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


def length_stats(lengths: Sequence[int]) -> LengthStats:
    """Percentiles (linear interpolation, as numpy's default) of token counts."""
    if not lengths:
        return LengthStats()
    import numpy as np

    arr = np.asarray(lengths, dtype=np.int64)
    p50, p90, p99 = (round(float(v), 2) for v in np.percentile(arr, PERCENTILES))
    return LengthStats(p50, p90, p99, int(arr.max()), round(float(arr.mean()), 2))
