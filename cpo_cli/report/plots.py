"""The plots of `cpo report`, drawn with matplotlib (the `report` extra): one figure per panel,
every run overlaid in its own colour, evaluation points marked, collapse warnings as red lines.
Rendered to SVG for the page (no script, no network) and to PNG for `--png`.

matplotlib is driven through `Figure` objects (never `pyplot`'s global state) on the Agg
backend, so reports render in a headless process and in threads."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpo_cli.errors import DependencyMissingError
from cpo_cli.gen_metrics import (
    ANSWER_ACCURACY,
    DISTINCT_2,
    EXACT_MATCH,
    LENGTH_RATIO,
    REPEATED_4GRAMS,
    TRUNCATED,
)
from cpo_cli.report.runs import RunData

#: the first colours of matplotlib's default cycle (tab10), one per run
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
LINESTYLES = ("-", "--", ":", "-.")


@dataclass(frozen=True)
class Panel:
    """One plot: training metrics (with their `eval_` twins as markers when `with_eval`), or
    evaluation-only metrics when every name starts with `eval_`."""

    key: str
    title: str
    metrics: tuple[str, ...]
    with_eval: bool = True


TRAINING_PANELS = (
    Panel("loss", "loss", ("loss",)),
    Panel("rewards", "rewards/chosen and rewards/rejected", ("rewards/chosen", "rewards/rejected")),
    Panel("margins", "rewards/margins", ("rewards/margins",)),
    Panel("accuracies", "rewards/accuracies", ("rewards/accuracies",)),
    Panel("nll_loss", "nll_loss", ("nll_loss",)),
    Panel("learning_rate", "learning_rate", ("learning_rate",), with_eval=False),
    Panel("grad_norm", "grad_norm", ("grad_norm",), with_eval=False),
    Panel("tokens_per_s", "tokens/s", ("tokens/s",), with_eval=False),
)
GENERATION_PANELS = (
    Panel("answer_accuracy", "answer accuracy of generations", (ANSWER_ACCURACY, EXACT_MATCH)),
    Panel("length_ratio", "generated length / chosen length", (LENGTH_RATIO,)),
    Panel("degeneration", "degeneration", (REPEATED_4GRAMS, DISTINCT_2, TRUNCATED)),
)


@dataclass
class Plot:
    key: str
    title: str
    figure: Any

    def svg(self) -> str:
        """The figure as an inline `<svg>` element (no XML prolog, unique ids per plot)."""
        buffer = io.StringIO()
        self.figure.savefig(buffer, format="svg", metadata={"Date": None})
        text = buffer.getvalue()
        text = text[text.index("<svg") :]
        # matplotlib's clip-path/defs ids repeat across figures; one page holds many
        return (
            re.sub(r'id="([^"]+)"', rf'id="{self.key}-\1"', text)
            .replace("url(#", f"url(#{self.key}-")
            .replace('xlink:href="#', f'xlink:href="#{self.key}-')
        )

    def write_png(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.key}.png"
        self.figure.savefig(path, format="png", dpi=120)
        return path


def require_matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise DependencyMissingError(
            "cpo report draws its plots with matplotlib, which is not installed",
            hint="pip install matplotlib (or pip install 'cpo-cli[report]')",
        ) from None
    matplotlib.use("Agg", force=True)
    return matplotlib


def _has_data(runs: Sequence[RunData], panel: Panel) -> bool:
    names = [*panel.metrics, *(f"eval_{m}" for m in panel.metrics if panel.with_eval)]
    return any(run.series(name)[0] for run in runs for name in names)


def _draw(panel: Panel, runs: Sequence[RunData]) -> Any:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 3.4), layout="constrained")
    axes = figure.subplots()
    warned = False
    for i, run in enumerate(runs):
        colour = COLOURS[i % len(COLOURS)]
        label_run = f"{run.name}: " if len(runs) > 1 else ""
        for j, metric in enumerate(panel.metrics):
            style = LINESTYLES[j % len(LINESTYLES)]
            label = metric.removeprefix("eval_gen/")
            steps, values = run.series(metric)
            if steps and not metric.startswith("eval_"):
                axes.plot(steps, values, style, color=colour, label=f"{label_run}{label}")
            elif steps:  # evaluation-only metric: points joined by a line
                axes.plot(
                    steps, values, style, marker="o", color=colour, label=f"{label_run}{label}"
                )
            if panel.with_eval and not metric.startswith("eval_"):
                e_steps, e_values = run.series(f"eval_{metric}")
                if e_steps:
                    axes.plot(
                        e_steps,
                        e_values,
                        linestyle="none",
                        marker="o",
                        markerfacecolor="white",
                        markeredgewidth=1.5,
                        color=colour,
                        label=f"{label_run}eval_{label}",
                    )
        if not panel.with_eval:  # where the evaluations happened, for reference
            for step in run.eval_steps():
                axes.axvline(step, color=colour, alpha=0.15, linewidth=1)
        for warning in run.warnings:
            axes.axvline(
                float(warning["step"]),
                color="#d62728",
                linestyle="--",
                linewidth=1.2,
                label=None if warned else f"{warning.get('warning', 'warning')} warning",
            )
            warned = True
    axes.set_title(panel.title, fontsize=11)
    axes.set_xlabel("optimizer step")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    return figure


def build_plots(runs: Sequence[RunData]) -> tuple[list[Plot], list[Plot]]:
    """(training plots, generation plots): one per panel that some run has data for."""
    require_matplotlib()
    training = [Plot(p.key, p.title, _draw(p, runs)) for p in TRAINING_PANELS if _has_data(runs, p)]
    generation = [
        Plot(p.key, p.title, _draw(p, runs)) for p in GENERATION_PANELS if _has_data(runs, p)
    ]
    return training, generation
