"""`cpo prepare` — any preference dataset in, a checked, tokenised, ready-to-train copy out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cpo_cli import console
from cpo_cli.errors import CpoError, DataError
from cpo_cli.format_names import (
    ALMA_SCORERS,
    CANONICAL_COLUMNS,
    CHAT_TEMPLATE_USES,
    COLUMN_MEANINGS,
    FORMAT_MEANINGS,
    RAW_DATA_FORMATS,
)

if TYPE_CHECKING:
    from cpo_cli.recipe.schema import ModelSection
    from cpo_cli.recipe.training import TrainingConfig


def _epilog() -> str:
    """The formats and canonical column names, from the one list the recipe also reads."""
    width = max(len(n) for n in (*FORMAT_MEANINGS, *CANONICAL_COLUMNS)) + 2
    formats = "\n".join(f"  {n.ljust(width)}{FORMAT_MEANINGS[n]}" for n in RAW_DATA_FORMATS)
    names = "\n".join(f"  {n.ljust(width)}{COLUMN_MEANINGS[n]}" for n in CANONICAL_COLUMNS)
    return (
        f"\b\nFormats (--format):\n{formats}\n\n"
        f"\b\nCanonical names (--columns NAME=COLUMN; a dotted path reads inside structs and "
        f"lists of structs, e.g. scores=completions.overall_score):\n{names}\n\n"
        "See docs/data.md for the command that reads each published dataset."
    )


EPILOG = _epilog()


def prepare(
    dataset: Annotated[
        list[str],
        typer.Option(
            "--dataset",
            "-d",
            help="A local file (.jsonl/.json/.parquet/.csv, text ones also .gz/.bz2/.zst/.xz), "
            "a glob, a folder (Hub snapshot or save_to_disk) or a Hub dataset name. Repeat it "
            "to mix several sources with the same options.",
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
        str | None,
        typer.Option(
            help="Dataset configuration: a Hub config, a README config of a folder, or a "
            "sub-folder.",
            show_default=False,
        ),
    ] = None,
    revision: Annotated[
        str | None, typer.Option(help="Hub branch, tag or commit.", show_default=False)
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option(
            help="Column mapping canonical=dataset_column, comma-separated, e.g. "
            "prompt=question,chosen=good,rejected=bad (names below).",
            show_default=False,
        ),
    ] = None,
    data_format: Annotated[
        str,
        typer.Option("--format", help=f"Row format: {'|'.join(RAW_DATA_FORMATS)} (below)."),
    ] = "auto",
    chat_template: Annotated[
        str,
        typer.Option(
            "--chat-template",
            help=f"How text rows meet the chat template: {'|'.join(CHAT_TEMPLATE_USES)} "
            "(auto: as TRL, text stays text unless there is a system column).",
        ),
    ] = "auto",
    directions: Annotated[
        str | None,
        typer.Option(
            help="alma_r: directions to build, e.g. de-en,en-de (default: both of each row).",
            show_default=False,
        ),
    ] = None,
    scorer: Annotated[
        str,
        typer.Option(help=f"alma_r: score fields to rank by: {'|'.join(ALMA_SCORERS)}."),
    ] = "kiwi_xcomet",
    max_row_bytes: Annotated[
        int | None,
        typer.Option(
            help="Drop rows whose text is over this many bytes before tokenising (default 2 MiB).",
            show_default=False,
        ),
    ] = None,
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

    sources = [
        data_source(
            path,
            split=split,
            subset=subset,
            revision=revision,
            columns=columns,
            data_format=data_format,
            max_rows=max_rows,
            chat_template=chat_template,
            directions=directions,
            scorer=scorer,
            max_row_bytes=max_row_bytes,
        )
        for path in dataset
    ]
    model_section, training = _settings(recipe, tokenizer, overrides or [])

    from cpo_cli.data.mixture import prepare_mixture
    from cpo_cli.data.prepare import save_prepared
    from cpo_cli.engine.model import build_tokenizer

    tok = build_tokenizer(model_section)
    is_enc_dec = _is_encoder_decoder(model_section, training)
    console.info(
        f"preparing {', '.join(dataset)} with tokenizer {getattr(tok, 'name_or_path', '')}"
    )
    seed = training.data_seed if training.data_seed is not None else training.seed
    prepared, parts = prepare_mixture(
        sources, tok, training, seed=seed, strict=strict, is_encoder_decoder=is_enc_dec
    )
    report = prepared.report
    if len(parts) > 1:
        for part in parts:
            console.result(part.report.table())
        prepared.manifest = {
            **parts[0].manifest,
            "source": {"mixture": [p.manifest.get("source") for p in parts]},
            "format": "mixture",
            "rows": {
                "in": report.rows_in,
                "kept": report.rows_kept,
                "dropped": report.rows_dropped,
            },
            "stats": report.to_dict(),
        }
    path = save_prepared(prepared, output)
    if json_report is not None:
        json_report.parent.mkdir(parents=True, exist_ok=True)
        data = {**report.to_dict(), "output": str(path)}
        if len(parts) > 1:
            data["parts"] = [p.report.to_dict() for p in parts]
        json_report.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
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
