"""`cpo recipe validate|show|schema`: check recipes (every problem at once), print a resolved
recipe with secrets redacted, and emit the JSON Schema editors use to complete recipe files.
Torch-free, so validating a folder of recipes takes well under a second each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cpo_cli import console
from cpo_cli.errors import CpoError, RecipeError

recipe_app = typer.Typer(
    help="Check recipes, print them resolved, or print their JSON Schema.",
    rich_markup_mode=console.help_markup(),
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class InvalidRecipesError(CpoError):
    """Some of the recipes given to `cpo recipe validate` are invalid (each already reported)."""


def _say(text: str) -> None:
    console.result(text, markup=False, highlight=False, soft_wrap=True)


def _status(word: str, rest: str) -> None:
    """`OK file` / `INVALID file: ...`, the word coloured on a terminal."""
    from rich.text import Text

    style = "bold green" if word == "OK" else "bold red"
    console.result(Text.assemble((word, style), " ", rest), soft_wrap=True)


def _expand(paths: list[Path]) -> list[Path]:
    """Folders become the recipes under them (recursively), so `cpo recipe validate recipes/`
    checks subfolders too."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted([*path.rglob("*.yaml"), *path.rglob("*.yml")])
            out.extend(found or [path])  # an empty folder is reported as a problem
        else:
            out.append(path)
    return out


@recipe_app.command("validate")
def validate(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Recipe files to check; a folder means every .yaml/.yml under it.",
            show_default=False,
            metavar="FILE",
        ),
    ],
    strict: Annotated[
        bool, typer.Option("--strict", help="Treat warnings as problems (non-zero exit).")
    ] = False,
) -> None:
    """Check recipes: one line per file, every problem listed, warnings shown.
    Exits 1 if any recipe is invalid."""
    from cpo_cli.recipe.loader import load_recipe

    files = _expand(files)
    bad = 0
    for file in files:
        try:
            loaded = load_recipe(file)
        except RecipeError as err:
            bad += 1
            n = len(err.problems)
            _status("INVALID", f"{file}: {n} problem{'s' if n != 1 else ''}")
            for problem in err.problems:
                _say(f"  - {problem}")
            continue
        n = len(loaded.warnings)
        failed = strict and n > 0
        bad += failed
        status = "INVALID" if failed else "OK"
        note = f" ({n} warning{'s' if n != 1 else ''})" if n else ""
        if failed or n or not console.is_quiet():
            _status(status, f"{file}{note}")
        for warning in loaded.warnings:
            _say(f"  warning: {warning}")
    if bad:
        raise InvalidRecipesError(
            f"{bad} of {len(files)} recipe{'s' if len(files) != 1 else ''} invalid"
        )


@recipe_app.command("show")
def show(
    file: Annotated[Path, typer.Argument(help="Recipe file.", show_default=False)],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="key=value overrides, e.g. training.beta=0.2.", show_default=False),
    ] = None,
    only_set: Annotated[
        bool,
        typer.Option("--changed", help="Show only the values that differ from the defaults."),
    ] = False,
) -> None:
    """Print the resolved recipe (overrides applied, interpolations resolved, every default
    filled in) as YAML. Secrets are replaced by ***."""
    from cpo_cli.recipe.dump import changed_only, to_yaml
    from cpo_cli.recipe.loader import load_recipe

    loaded = load_recipe(file, overrides or [])
    for warning in loaded.warnings:
        console.warn(warning)
    _say(changed_only(loaded) if only_set else to_yaml(loaded).rstrip("\n"))


@recipe_app.command("schema")
def schema() -> None:
    """Print the recipe's JSON Schema (for editor completion and checking, e.g. with the YAML
    language server: `# yaml-language-server: $schema=cpo-recipe.schema.json`)."""
    from cpo_cli.recipe.schema import Recipe

    document = {"$schema": "https://json-schema.org/draft/2020-12/schema"}
    document.update(Recipe.model_json_schema())
    _say(json.dumps(document, indent=2))
