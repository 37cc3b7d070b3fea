"""Which dataset column (or path inside one) feeds each canonical name.

A mapping is `canonical -> path`: a column name, or a dotted path that reads inside structs and
through lists of structs (`completions.overall_score` is the list of every completion's score).
Without a mapping, columns already named canonically are used as they are, and a few published
names are recognised (`question`/`instruction` as the prompt, HelpSteer's pairwise names).
Every problem with a mapping is a `DataError` naming the dataset's own columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cpo_cli.errors import DataError
from cpo_cli.format_names import CANONICAL_COLUMNS

#: Published column names read as a canonical one when the dataset has no column of that name
#: and the mapping does not set it; the first present wins.
PROMPT_ALIASES = ("question", "instruction")
#: nvidia/HelpSteer2/3's pairwise layout: used as a whole when all three answer columns exist.
HELPSTEER_NAMES = {
    "response_a": "response1",
    "response_b": "response2",
    "preference": "overall_preference",
    "prompt": "context",
}


#: Column names that suggest a canonical name, for hints when none is recognised.
LOOKALIKES = {
    "prompt": ("prompt", "question", "instruction", "input", "query", "context", "source"),
    "chosen": ("chosen", "good", "preferred", "better", "winner", "accepted", "positive"),
    "rejected": ("rejected", "bad", "dispreferred", "worse", "loser", "negative"),
}


def guess_column(canonical: str, columns: Sequence[str], exclude: Iterable[str] = ()) -> str | None:
    """A dataset column whose name looks like `canonical` (for hints only, never applied)."""
    taken = set(exclude)
    hints = LOOKALIKES.get(canonical, (canonical,))
    lowered = {c.lower(): c for c in columns if c not in taken}
    found = next((lowered[h] for h in hints if h in lowered), None)
    if found is None:
        found = next(
            (c for c in columns if c not in taken and any(h in c.lower() for h in hints)), None
        )
    return found


@dataclass(frozen=True)
class ColumnPlan:
    """Canonical name -> path into a row (a tuple of keys), and how each was chosen."""

    paths: dict[str, tuple[str, ...]]
    notes: list[str] = field(default_factory=list)

    @property
    def canonical(self) -> list[str]:
        return list(self.paths)

    def describe(self) -> dict[str, str]:
        return {name: ".".join(path) for name, path in self.paths.items()}

    def extract(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The canonical row: each canonical name's value (absent names are left out)."""
        out: dict[str, Any] = {}
        for name, path in self.paths.items():
            if path[0] not in row:
                continue
            out[name] = read_path(row, path)
        return out


def parse_columns(spec: str | None) -> dict[str, str]:
    """`"prompt=question,chosen=good"` -> `{"prompt": "question", "chosen": "good"}`."""
    mapping: dict[str, str] = {}
    if not spec:
        return mapping
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        canonical, sep, column = (part.strip() for part in item.partition("="))
        if not sep or not canonical or not column:
            raise DataError(
                f"--columns: cannot read {item!r}",
                hint="write canonical=dataset_column pairs, e.g. prompt=question,chosen=good",
            )
        if canonical in mapping and mapping[canonical] != column:
            raise DataError(
                f"--columns: {canonical} is mapped twice ({mapping[canonical]} and {column})",
                hint="map each canonical name once",
            )
        mapping[canonical] = column
    check_column_mapping(mapping)
    return mapping


def check_column_mapping(mapping: Mapping[str, str]) -> None:
    """Unknown canonical names, and two canonical names on one column, are errors."""
    unknown = sorted(set(mapping) - set(CANONICAL_COLUMNS))
    if unknown:
        raise DataError(
            f"columns: unknown canonical name(s) {', '.join(unknown)}",
            hint=f"the names a mapping may set are {', '.join(CANONICAL_COLUMNS)}",
        )
    by_column: dict[str, list[str]] = {}
    for canonical, column in mapping.items():
        by_column.setdefault(column, []).append(canonical)
    shared = {column: names for column, names in by_column.items() if len(names) > 1}
    if shared:
        column, names = next(iter(shared.items()))
        raise DataError(
            f"columns: {' and '.join(names)} all name the column {column!r}",
            hint="map each canonical name to its own column",
        )


def read_path(value: Any, path: Sequence[str]) -> Any:
    """The value at `path`: a key of a mapping, or the same key of every struct in a list.
    A missing key reads as None (the row checker reports it)."""
    for depth, key in enumerate(path):
        if isinstance(value, Mapping):
            value = value.get(key)
        elif isinstance(value, list):
            rest = path[depth:]
            return [read_path(item, rest) for item in value]
        else:
            return None
    return value


def plan_columns(
    columns: Sequence[str],
    mapping: Mapping[str, str],
    sample: Sequence[Mapping[str, Any]],
    source: str,
) -> ColumnPlan:
    """The column plan of a dataset with `columns` under the user's `mapping`, checking every
    mapped path against the dataset (and, below the top level, against `sample` rows)."""
    check_column_mapping(mapping)
    paths: dict[str, tuple[str, ...]] = {}
    notes: list[str] = []
    for canonical, spec in mapping.items():
        paths[canonical] = _resolve(spec, columns, sample, source, canonical)
    used = {path[0] for path in paths.values()}
    for name in CANONICAL_COLUMNS:
        if name not in paths and name in columns and name not in used:
            paths[name] = (name,)
    _apply_aliases(paths, columns, used, notes)
    return ColumnPlan(paths, notes)


def _apply_aliases(
    paths: dict[str, tuple[str, ...]], columns: Sequence[str], used: set[str], notes: list[str]
) -> None:
    present = set(columns) - used
    helpsteer = {"response1", "response2", "overall_preference"}
    if helpsteer <= present and not ({"response_a", "response_b", "preference"} & set(paths)):
        for canonical, column in HELPSTEER_NAMES.items():
            if column in present and canonical not in paths:
                paths[canonical] = (column,)
                notes.append(f"{canonical} read from column {column!r} (HelpSteer's name)")
    if "prompt" not in paths and "messages" not in paths:
        for alias in PROMPT_ALIASES:
            if alias in present:
                paths["prompt"] = (alias,)
                notes.append(f"prompt read from column {alias!r}")
                break


def _resolve(
    spec: str,
    columns: Sequence[str],
    sample: Sequence[Mapping[str, Any]],
    source: str,
    canonical: str,
) -> tuple[str, ...]:
    if spec in columns:  # a column whose name has a dot in it is still a column
        return (spec,)
    path = tuple(spec.split("."))
    if path[0] not in columns or not all(path):
        raise DataError(
            f"{source}: columns: {canonical}={spec} names a column the dataset does not have",
            hint=f"the dataset's columns are: {', '.join(columns) or '(none)'}",
        )
    for depth in range(1, len(path)):
        keys = _keys_at(sample, path[:depth])
        if keys is not None and path[depth] not in keys:
            where = ".".join(path[:depth])
            found = ", ".join(sorted(keys)) or "(no keys)"
            raise DataError(
                f"{source}: columns: {canonical}={spec}: {where!r} has no field {path[depth]!r}",
                hint=f"the fields of {where!r} in the first rows are: {found}",
            )
    return path


def _keys_at(sample: Sequence[Mapping[str, Any]], prefix: Sequence[str]) -> set[str] | None:
    """The keys found at `prefix` in the sample rows (through lists); None when no sample row
    holds a struct there (nothing to check against)."""
    keys: set[str] = set()
    seen = False
    for row in sample:
        for value in _flatten(read_path(row, prefix)):
            if isinstance(value, Mapping):
                seen = True
                keys.update(str(k) for k in value)
    return keys if seen else None


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, list):
        out: list[Any] = []
        for item in value:
            out.extend(_flatten(item))
        return out
    return [value]
