"""What `cpo report` reads from a run's output folder: `metrics.jsonl` (training logs,
evaluations, warnings), `recipe.yaml`, `eval_samples.jsonl` and `train_results.json`. Plain
files in, plain data out: no torch, no plotting."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpo_cli.errors import UsageError

METRICS_FILE = "metrics.jsonl"
RECIPE_FILE = "recipe.yaml"
SAMPLES_FILE = "eval_samples.jsonl"
SUMMARY_FILE = "train_results.json"
#: recipe keys that differ between any two runs by construction: not worth a row
IGNORED_DIFFERENCES = ("training.output_dir", "training.logging_dir")

Record = dict[str, float]


@dataclass
class RunData:
    name: str
    path: Path
    #: training log records (`loss`, `rewards/*`, `learning_rate`, ...) with their `step`
    train: list[Record] = field(default_factory=list)
    #: evaluation records (`eval_*`, generation metrics included) with their `step`
    evals: list[Record] = field(default_factory=list)
    #: `{"step", "warning", "message"}` lines, e.g. collapse warnings
    warnings: list[dict[str, Any]] = field(default_factory=list)
    recipe: dict[str, Any] | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None

    def series(self, metric: str) -> tuple[list[float], list[float]]:
        """(steps, values) of one metric, from the evaluation records for `eval_` names."""
        records = self.evals if metric.startswith("eval_") else self.train
        points = [(r["step"], r[metric]) for r in records if metric in r]
        return [p[0] for p in points], [p[1] for p in points]

    def last(self, metric: str) -> float | None:
        values = self.series(metric)[1]
        return values[-1] if values else None

    def eval_steps(self) -> list[float]:
        return sorted({r["step"] for r in self.evals})


def _number(value: Any) -> float | None:
    """A metric value as written by the JSONL sink (NaN and infinities as strings)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isnan(number) or math.isinf(number) else None
    return None


def read_metrics(path: Path) -> tuple[list[Record], list[Record], list[dict[str, Any]]]:
    """(training records, evaluation records, warnings) of a `metrics.jsonl`; a line cut short
    by a crash is skipped."""
    train: list[Record] = []
    evals: list[Record] = []
    warnings: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            raw = json.loads(line)
        except ValueError:
            continue
        if not isinstance(raw, dict) or "step" not in raw:
            continue
        if "warning" in raw:
            warnings.append(raw)
            continue
        record = {k: n for k, v in raw.items() if (n := _number(v)) is not None}
        is_eval = any(k.startswith("eval_") for k in record)
        (evals if is_eval else train).append(record)
    return train, evals, warnings


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _read_recipe(folder: Path) -> dict[str, Any] | None:
    """The final `recipe.yaml`, else the newest checkpoint's (an unfinished run)."""
    import yaml

    candidates = [folder / RECIPE_FILE]
    checkpoints = sorted(
        folder.glob("checkpoint-*/" + RECIPE_FILE),
        key=lambda p: int(p.parent.name.split("-")[-1]) if p.parent.name[11:].isdigit() else -1,
    )
    candidates += reversed(checkpoints)
    for path in candidates:
        if path.is_file():
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError:
                continue
            if isinstance(data, dict):
                return data
    return None


def load_run(folder: Path, name: str | None = None) -> RunData:
    """Everything a report shows of one run folder (`training.output_dir` of `cpo train`)."""
    folder = folder.expanduser()
    metrics = folder / METRICS_FILE
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder (give the output_dir of a `cpo train` run)")
    if not metrics.is_file():
        raise UsageError(
            f"{folder}: no {METRICS_FILE} here — not the output_dir of a `cpo train` run",
            hint="cpo report reads training.output_dir (where metrics.jsonl is written)",
        )
    train, evals, warnings = read_metrics(metrics)
    summary = None
    if (folder / SUMMARY_FILE).is_file():
        try:
            summary = json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
        except ValueError:
            summary = None
    samples_path = folder / SAMPLES_FILE
    return RunData(
        name=name or folder.resolve().name,
        path=folder,
        train=train,
        evals=evals,
        warnings=warnings,
        recipe=_read_recipe(folder),
        samples=_read_jsonl(samples_path) if samples_path.is_file() else [],
        summary=summary if isinstance(summary, dict) else None,
    )


def run_names(folders: Sequence[Path]) -> list[str]:
    """Short, distinct labels: folder names, with parents added until they differ."""
    parts = [f.expanduser().resolve().parts for f in folders]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(f) for f in folders]


def load_runs(folders: Sequence[Path]) -> list[RunData]:
    if not folders:
        raise UsageError("cpo report needs at least one RUN_DIR")
    return [load_run(f, n) for f, n in zip(folders, run_names(folders), strict=True)]


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys: {"training": {"beta": 0.1}} -> {"training.beta": 0.1}."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


MISSING = "—"


def recipe_differences(recipes: Sequence[Mapping[str, Any] | None]) -> list[tuple[str, list[Any]]]:
    """Every dotted recipe key whose value is not the same in all runs, with each run's value
    (`MISSING` where a run's recipe lacks the key or the run has no recipe)."""
    flats = [flatten(r) if r else {} for r in recipes]
    keys = sorted(set().union(*flats)) if flats else []
    rows = []
    for key in keys:
        if key in IGNORED_DIFFERENCES:
            continue
        values = [f.get(key, MISSING) for f in flats]
        if any(v != values[0] for v in values[1:]):
            rows.append((key, values))
    return rows
