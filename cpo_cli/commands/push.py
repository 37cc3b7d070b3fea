"""`cpo push`: publish a trained output folder (model, tokenizer, recipe, model card) to the Hub."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cpo_cli import console

if TYPE_CHECKING:
    from cpo_cli.hub import PushPlan


def push(
    output_dir: Annotated[
        Path,
        typer.Argument(help="Output folder of a finished `cpo train` run.", show_default=False),
    ],
    repo_id: Annotated[
        str | None,
        typer.Option(
            "--repo-id", help="USER/NAME on the Hub (default: the recipe's hub_model_id)."
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help="Hub token with write access (default: the recipe's hub_token, then HF_TOKEN, "
            "then `hf auth login`). Never printed.",
            show_default=False,
        ),
    ] = None,
    private: Annotated[
        bool | None,
        typer.Option(
            "--private/--public",
            help="Visibility of a newly created repo (default: the recipe's hub_private_repo).",
            show_default=False,
        ),
    ] = None,
    revision: Annotated[
        str | None,
        typer.Option("--revision", help="Branch to push to, created if missing (hub_revision)."),
    ] = None,
    commit_message: Annotated[
        str | None, typer.Option("--commit-message", help="Commit message on the Hub.")
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Build the card and list every file and size; no network call."
        ),
    ] = False,
    card_path: Annotated[
        Path | None,
        typer.Option("--card", help="Also write the generated model card to this file."),
    ] = None,
) -> None:
    """Upload a trained model with its tokenizer, resolved recipe and a generated model card."""
    from cpo_cli import __version__
    from cpo_cli.hub import plan_push, require_token, resolve_settings, upload

    settings = resolve_settings(
        output_dir, repo_id=repo_id, token=token, private=private, revision=revision
    )
    if not dry_run:
        require_token(settings)  # before listing what would have gone up
    plan = plan_push(output_dir, settings, cpo_version=__version__)
    if card_path is not None:
        card_path.write_text(plan.card, encoding="utf-8")
    _show_plan(plan, dry_run=dry_run)
    if dry_run:
        console.result(plan.card, markup=False, highlight=False)
        return
    url = upload(plan, commit_message=commit_message)
    console.result(f"pushed {len(plan.files)} files to {settings.repo_id}: {url}", markup=False)


def _show_plan(plan: PushPlan, *, dry_run: bool) -> None:
    from rich.table import Table

    s = plan.settings
    visibility = "private" if s.private else ("public" if s.private is False else "Hub default")
    header = (
        f"{'would push' if dry_run else 'pushing'} to {s.repo_id}"
        f" (branch {s.revision or 'main'}, {visibility}, token: {s.token_source})"
    )
    table = Table(title=header, title_justify="left")
    table.add_column("file")
    table.add_column("bytes", justify="right")
    table.add_column("note")
    for f in plan.files:
        table.add_row(f.path_in_repo, f"{f.size:,}", f.note)
    table.add_row(f"{len(plan.files)} files", f"{plan.total_bytes:,}", "total")
    (console.result if dry_run else console.info)(table)
