"""`cpo prepare` — any preference dataset in, a checked, tokenised, ready-to-train copy out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cpo_cli import console
from cpo_cli.errors import CpoError, DataError
from cpo_cli.format_names import CANONICAL_COLUMNS, RAW_DATA_FORMATS

if TYPE_CHECKING:
    from cpo_cli.recipe.schema import ModelSection
    from cpo_cli.recipe.training import TrainingConfig


def prepare(
    dataset: Annotated[
        str,
        typer.Option(
            "--dataset",
            "-d",
            help="Local .jsonl/.json/.parquet/.csv, a save_to_disk folder or a Hub dataset name.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Folder to write the prepared dataset to.", show_default=False
        ),
    ],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="Recipe overrides as key=value (training.max_length=512; a bare "
            "key means training.KEY).",
            show_default=False,
        ),
    ] = None,
    recipe: Annotated[
        Path | None,
        typer.Option(
            "--recipe",
            "-r",
            help="Recipe whose model tokenizer, chat template and training lengths to use.",
            show_default=False,
        ),
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            "--tokenizer",
            "-t",
            help="Tokenizer name or folder (instead of a "
            "recipe; lengths then default to CPOConfig's).",
            show_default=False,
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="Split to read.")] = "train",
    subset: Annotated[
        str | None, typer.Option(help="Dataset configuration (Hub).", show_default=False)
    ] = None,
    revision: Annotated[
        str | None, typer.Option(help="Hub branch, tag or commit.", show_default=False)
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option(
            help="Column mapping canonical=dataset_column, comma-separated, e.g. "
            f"prompt=question,chosen=good (canonical: {', '.join(CANONICAL_COLUMNS)}).",
            show_default=False,
        ),
    ] = None,
    data_format: Annotated[
        str,
        typer.Option("--format", help=f"Row format: {'|'.join(RAW_DATA_FORMATS)}."),
    ] = "auto",
    max_rows: Annotated[
        int | None, typer.Option(help="Use only the first N rows.", show_default=False)
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail if any row would be dropped.")
    ] = False,
    json_report: Annotated[
        Path | None,
        typer.Option(
            "--json",
            help="Also write the report as one JSON object to this file.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Check and tokenise a preference dataset once; `cpo train` reads the output folder
    directly (and refuses it if the tokenizer or lengths differ)."""
    if (recipe is None) == (tokenizer is None):
        raise DataError(
            "cpo prepare needs exactly one of --recipe and --tokenizer",
            hint="--recipe FILE uses the recipe's model tokenizer and lengths; "
            "--tokenizer NAME_OR_PATH uses CPOConfig's default lengths",
        )
    if data_format not in RAW_DATA_FORMATS:
        raise DataError(f"--format: {data_format!r} is not one of {', '.join(RAW_DATA_FORMATS)}")
    from cpo_cli.commands.options import data_source

    source = data_source(
        dataset,
        split=split,
        subset=subset,
        revision=revision,
        columns=columns,
        data_format=data_format,
        max_rows=max_rows,
    )
    model_section, training = _settings(recipe, tokenizer, overrides or [])

    from cpo_cli.data.prepare import prepare_dataset, save_prepared
    from cpo_cli.engine.model import build_tokenizer

    tok = build_tokenizer(model_section)
    is_enc_dec = _is_encoder_decoder(model_section, training)
    console.info(f"preparing {dataset} with tokenizer {getattr(tok, 'name_or_path', '')}")
    prepared = prepare_dataset(source, tok, training, strict=strict, is_encoder_decoder=is_enc_dec)
    report = prepared.report
    if report.rows_kept == 0:
        raise DataError(
            f"{dataset}: no usable pairs ({report.rows_in} rows, all dropped): "
            + "; ".join(report.drop_lines())
        )
    path = save_prepared(prepared, output)
    if json_report is not None:
        json_report.parent.mkdir(parents=True, exist_ok=True)
        json_report.write_text(
            json.dumps({**report.to_dict(), "output": str(path)}, indent=2) + "\n",
            encoding="utf-8",
        )
    console.result(report.table())
    if report.rows_dropped:
        console.warn(f"{report.rows_dropped} of {report.rows_in} rows dropped (see above)")
    console.result(f"prepared {report.rows_kept} pairs in {path}")


def _settings(
    recipe: Path | None, tokenizer: str | None, overrides: list[str]
) -> tuple[ModelSection, TrainingConfig]:
    """(model section, training config) from the recipe, or the schema's defaults around
    `--tokenizer`."""
    from cpo_cli.recipe.loader import load_recipe, load_recipe_dict

    dotted = [o if "." in o.split("=", 1)[0] else f"training.{o}" for o in overrides]
    if recipe is not None:
        loaded = load_recipe(recipe, dotted)
        for warning in loaded.warnings:
            console.warn(warning)
        return loaded.recipe.model, loaded.recipe.training
    stub = {"model": {"name_or_path": str(tokenizer)}, "data": {"train": {"path": "unused"}}}
    loaded = load_recipe_dict(stub, dotted, source="--tokenizer")
    return loaded.recipe.model, loaded.recipe.training


def _is_encoder_decoder(model_section: ModelSection, training: TrainingConfig) -> bool:
    """From the recipe or the model config; a tokenizer-only folder means decoder-only."""
    from cpo_cli.engine.model import is_encoder_decoder_model

    try:
        return is_encoder_decoder_model(model_section, training)
    except CpoError:
        return False
