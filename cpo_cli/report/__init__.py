"""`cpo report`: one self-contained HTML page (and optional PNGs) comparing training runs:
metrics over steps, recipe differences, generation metrics and eval samples."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class ReportResult:
    html_path: Path
    plots: int
    png_files: list[Path]


def build_report(run_dirs: list[Path], output: Path, png_dir: Path | None = None) -> ReportResult:
    """Read the runs, draw the plots, write the page (and the PNGs)."""
    from cpo_cli.report.page import render_page
    from cpo_cli.report.plots import build_plots
    from cpo_cli.report.runs import load_runs

    runs = load_runs(run_dirs)
    training, generation = build_plots(runs)
    page = render_page(runs, training, generation)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(page, encoding="utf-8")
    pngs = [p.write_png(png_dir) for p in [*training, *generation]] if png_dir else []
    return ReportResult(output, len(training) + len(generation), pngs)
