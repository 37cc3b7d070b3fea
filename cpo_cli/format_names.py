"""The data formats and canonical column names, in one place for the recipe schema (which
validates them), the data layer (which detects and checks rows by them) and the help of
`cpo prepare` / `cpo eval` (which lists them). Import-light, like `metric_names`: `cpo --help`
reads it without loading the recipe machinery."""

from __future__ import annotations

from typing import Literal, get_args

#: the shapes a row of preference data may have
RowFormat = Literal["standard", "conversational", "implicit", "scored"]
#: `data.*.format`: a row format, `auto` (detected per dataset), or a `cpo prepare` folder
DataFormat = Literal["auto", RowFormat, "prepared"]
#: canonical column names a `data.*.columns` mapping may rename
CanonicalColumn = Literal["prompt", "chosen", "rejected", "messages", "candidates", "scores"]

DATA_FORMATS: tuple[str, ...] = get_args(DataFormat)
#: formats of raw (not yet prepared) data: what `cpo prepare --format` takes
RAW_DATA_FORMATS: tuple[str, ...] = tuple(f for f in DATA_FORMATS if f != "prepared")
CANONICAL_COLUMNS: tuple[str, ...] = get_args(CanonicalColumn)
