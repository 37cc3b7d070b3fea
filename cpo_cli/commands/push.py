"""`cpo push`: publish a trained output folder (model, tokenizer, recipe, model card) to the Hub."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cpo_cli import console
from cpo_cli.errors import UsageError

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
    eval_json: Annotated[
        Path | None,
        typer.Option(
            "--eval-json",
            help="A `cpo eval --json` report of OUTPUT_DIR for the card's model-index "
            "(default: OUTPUT_DIR/eval_results.json, else the run's own final evaluation).",
            show_default=False,
        ),
    ] = None,
    merge: Annotated[
        bool,
        typer.Option(
            "--merge",
            help="Push a LoRA adapter merged into its base model, after checking that the "
            "merged model computes what the adapter model computes on held-out pairs.",
        ),
    ] = False,
    merge_dtype: Annotated[
        str | None,
        typer.Option(
            "--merge-dtype",
            help="dtype of the merged weights: float32, bfloat16 or float16 "
            "(default: the dtype the recipe loads the base model in). Checked in that dtype.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Upload a trained model with its tokenizer, resolved recipe and a generated model card.

    Local paths in the card, recipe and summaries go up as `name (local)`; the folder itself
    is only read (--merge writes the merged weights to a temporary folder)."""
    import tempfile
    from contextlib import nullcontext

    from cpo_cli import __version__
    from cpo_cli.hub import plan_push, require_token, resolve_settings, upload
    from cpo_cli.output_folder import read_eval_report

    if merge_dtype is not None and not merge:
        raise UsageError("--merge-dtype sets the dtype of a merge: add --merge")
    settings = resolve_settings(
        output_dir, repo_id=repo_id, token=token, private=private, revision=revision
    )
    if not dry_run:
        require_token(settings)  # before listing what would have gone up
    evaluation = read_eval_report(eval_json, output_dir, flag="--eval-json") if eval_json else None
    scratch = tempfile.TemporaryDirectory(prefix="cpo-merged-") if merge else nullcontext(None)
    with scratch as merged_dir:
        check = None
        if merged_dir is not None:
            from cpo_cli.push_merge import merge_output_folder

            check = merge_output_folder(output_dir, Path(merged_dir), dtype=merge_dtype)
        plan = plan_push(
            output_dir,
            settings,
            cpo_version=__version__,
            evaluation=evaluation,
            merged_dir=Path(merged_dir) if merged_dir is not None else None,
            merge_check=check,
        )
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
