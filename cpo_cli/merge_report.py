"""What a LoRA merge check measured (`cpo_cli.engine.merge_check`), as data: written beside a
merged model as `merge_check.json`, read back by the model card. Torch-free, below the engine,
so that publishing can read it."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: written beside the final model; the model card reports it
REPORT_FILE = "merge_check.json"


@dataclass(frozen=True)
class MergeCheck:
    """What the check measured, in |Δ log-prob| per answer token (nats) against the adapter
    model: `merge_*` for the merge done in the adapter's own dtype (a pure merge error),
    `max_diff` / `mean_diff` for the model as saved (merge plus any cast to `dtype`). NaN
    where the check stopped before measuring."""

    passed: bool
    pairs: int
    pairs_from: str
    reference_dtype: str
    merge_max_diff: float
    merge_tolerance: float
    dtype: str
    max_diff: float
    mean_diff: float
    tolerance: float
    problems: tuple[str, ...] = field(default_factory=tuple)

    def summary(self) -> str:
        """One line with the numbers, for the console, errors and the model card."""
        if self.problems:
            return "; ".join(self.problems)
        text = (
            "largest log-prob difference per answer token from the "
            f"{self.reference_dtype} adapter model, on {self.pairs} pairs of {self.pairs_from} "
            f"({2 * self.pairs} answers): merged {_num(self.merge_max_diff)} "
            f"(tolerance {self.merge_tolerance:g})"
        )
        if self.dtype != self.reference_dtype and not math.isnan(self.max_diff):
            text += f", saved as {self.dtype} {_num(self.max_diff)} (tolerance {self.tolerance:g})"
        return text + (": passed" if self.passed else ": beyond the tolerance")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["problems"] = list(self.problems)
        for key in ("merge_max_diff", "max_diff", "mean_diff"):
            if not math.isfinite(data[key]):
                data[key] = str(data[key])  # JSON has no NaN/inf
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MergeCheck:
        return cls(
            passed=bool(data["passed"]),
            pairs=int(data["pairs"]),
            pairs_from=str(data["pairs_from"]),
            reference_dtype=str(data["reference_dtype"]),
            merge_max_diff=float(data["merge_max_diff"]),
            merge_tolerance=float(data["merge_tolerance"]),
            dtype=str(data["dtype"]),
            max_diff=float(data["max_diff"]),
            mean_diff=float(data["mean_diff"]),
            tolerance=float(data["tolerance"]),
            problems=tuple(str(p) for p in data.get("problems") or ()),
        )


def _num(value: float) -> str:
    return f"{value:.2g}" if math.isfinite(value) else str(value)


def write_report(check: MergeCheck, folder: Path) -> Path:
    """`merge_check.json`, written whole (temporary file, then rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / REPORT_FILE
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(check.to_json(), indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path


def read_report(folder: Path) -> MergeCheck | None:
    """The check recorded beside a model, if any (an unreadable file counts as none)."""
    path = Path(folder) / REPORT_FILE
    try:
        return MergeCheck.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None
