"""`cpo report RUN_DIR [RUN_DIR ...]` — one HTML page comparing training runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cpo_cli import console


def report(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(
            help="Output folders of `cpo train` runs (training.output_dir); several are "
            "overlaid in one page.",
            show_default=False,
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="The HTML file to write.")] = Path(
        "report.html"
    ),
    png: Annotated[
        Path | None,
        typer.Option("--png", help="Also write every plot as a PNG file into this folder."),
    ] = None,
) -> None:
    """Plot runs side by side: loss, rewards, margins, accuracies, nll_loss, learning rate,
    grad norm and tokens/s over steps (eval points marked), recipe differences, generation
    metrics and eval samples, in one self-contained HTML file (needs matplotlib: the
    `report` extra)."""
    from cpo_cli.report import build_report

    result = build_report(list(run_dirs), output, png)
    console.result(f"report written to {result.html_path} ({result.plots} plots)", markup=False)
    if result.png_files:
        console.result(f"{len(result.png_files)} PNG files written to {png}", markup=False)
