"""Command-line options more than one command takes, defined once: `--quiet`, and a dataset
named on the command line (`--dataset/--split/--columns/--format/...`) turned into the recipe's
own `DataSource`, so it is checked by the same schema as `data.train` / `data.eval`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from cpo_cli.errors import UsageError

if TYPE_CHECKING:
    from cpo_cli.recipe.schema import DataSource

#: `cpo --quiet ...` and `cpo train RECIPE --quiet` (people put it after the command too)
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print only warnings, errors and results.")
]


def data_source(
    dataset: str,
    *,
    split: str | None = None,
    subset: str | None = None,
    revision: str | None = None,
    columns: str | None = None,
    data_format: str | None = None,
    max_rows: int | None = None,
    chat_template: str | None = None,
    directions: str | None = None,
    scorer: str | None = None,
    max_row_bytes: int | None = None,
) -> DataSource:
    """`--dataset` and the options describing it as a validated `DataSource`; an option left
    out keeps the schema's default. A bad value is a usage error naming the option."""
    from pydantic import ValidationError

    from cpo_cli.data.columns import parse_columns
    from cpo_cli.recipe.schema import DataSource

    given = {
        "split": split,
        "subset": subset,
        "revision": revision,
        "format": data_format,
        "max_rows": max_rows,
        "chat_template": chat_template,
        "directions": directions,
        "scorer": scorer,
        "max_row_bytes": max_row_bytes,
    }
    fields: dict[str, Any] = {"path": dataset, "columns": parse_columns(columns)}
    fields.update({key: value for key, value in given.items() if value is not None})
    try:
        return DataSource(**fields)
    except ValidationError as exc:
        problems = "; ".join(f"{_option(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise UsageError(f"--dataset {dataset}: {problems}") from None


def _option(loc: tuple[int | str, ...]) -> str:
    """A `DataSource` field as the command-line option that sets it (`max_rows` -> --max-rows)."""
    return "--" + str(loc[0]).replace("_", "-") if loc else "--dataset"
