"""The `cpo report` page: one self-contained HTML file (inline CSS and SVG plots; no script,
no font or image from anywhere else), readable offline and attachable to a CI run."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from cpo_cli.gen_metrics import GENERATION_METRICS
from cpo_cli.report.plots import COLOURS, Plot
from cpo_cli.report.runs import MISSING, RunData, recipe_differences

#: final values shown per run in the summary table
SUMMARY_METRICS = (
    "eval_loss",
    "eval_rewards/accuracies",
    "eval_rewards/margins",
    "loss",
    "rewards/accuracies",
)
#: sample rows shown per run (the last evaluation's)
SAMPLE_ROWS = 12

CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.swatch { display: inline-block; width: 12px; height: 12px; margin-right: 6px; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
figure.plot { margin: 0; border: 1px solid #ddd; padding: 4px; width: 600px; }
figure.plot svg { width: 100%; height: auto; }
.warning { color: #b00020; }
.objective { font-family: ui-monospace, monospace; font-size: 12px; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: float | None) -> str:
    if value is None:
        return MISSING
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.4g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = [
            f'<td class="num">{c}</td>' if i >= numeric_from else f"<td>{c}</td>"
            for i, c in enumerate(row)
        ]
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _run_label(run: RunData, i: int) -> str:
    colour = COLOURS[i % len(COLOURS)]
    return f'<span class="swatch" style="background:{colour}"></span>{_e(run.name)}'


def _objective(run: RunData) -> str | None:
    """The run's objective line (as `cpo train` printed it), when its recipe still loads."""
    training = (run.recipe or {}).get("training")
    if not isinstance(training, dict):
        return None
    try:
        from cpo_cli.losses.formula import describe_objective
        from cpo_cli.recipe.training import TrainingConfig

        return describe_objective(TrainingConfig(**training))
    except Exception:  # a recipe from another cpo version: the report still renders
        return None


def _summary(runs: Sequence[RunData]) -> str:
    rows = []
    for i, run in enumerate(runs):
        steps = max((r["step"] for r in [*run.train, *run.evals]), default=0)
        wall = (run.summary or {}).get("wall_time_s")
        rows.append(
            [
                _run_label(run, i),
                _e(run.path),
                _num(steps),
                _num(float(wall)) if isinstance(wall, int | float) else MISSING,
                *(_num(run.last(m)) for m in SUMMARY_METRICS),
            ]
        )
    header = ["run", "folder", "steps", "wall time (s)", *(f"last {m}" for m in SUMMARY_METRICS)]
    table = _table(header, rows, numeric_from=2)
    objectives = []
    for run in runs:
        line = _objective(run)
        if line:
            objectives.append(
                f'<li><b>{_e(run.name)}</b>: <span class="objective">{_e(line)}</span></li>'
            )
    listed = f"<ul>{''.join(objectives)}</ul>" if objectives else ""
    return f"<h2>Runs</h2>{table}{listed}"


def _warnings(runs: Sequence[RunData]) -> str:
    items = [
        f'<li class="warning"><b>{_e(run.name)}</b>, step {_num(float(w.get("step", 0)))}: '
        f"{_e(w.get('message', w.get('warning', '')))}</li>"
        for run in runs
        for w in run.warnings
    ]
    if not items:
        return ""
    return f'<h2 class="warning">Warnings</h2><ul>{"".join(items)}</ul>'


def _differences(runs: Sequence[RunData]) -> str:
    if len(runs) < 2:
        return ""
    rows = recipe_differences([r.recipe for r in runs])
    if not rows:
        return "<h2>Recipe differences</h2><p>The recipes are the same.</p>"
    header = ["recipe key", *(r.name for r in runs)]
    cells = [[_e(key), *(_e(v) for v in values)] for key, values in rows]
    return f"<h2>Recipe differences</h2>{_table(header, cells, numeric_from=len(header))}"


def _plots(title: str, plots: Sequence[Plot]) -> str:
    if not plots:
        return ""
    # the title is drawn in the figure itself (so the PNGs carry it too)
    figures = "".join(
        f'<figure class="plot" data-plot="{_e(p.key)}">{p.svg()}</figure>' for p in plots
    )
    return f'<h2>{_e(title)}</h2><div class="plots">{figures}</div>'


def _generation_table(runs: Sequence[RunData]) -> str:
    present = [m for m in GENERATION_METRICS if any(r.last(m) is not None for r in runs)]
    if not present:
        return ""
    rows = []
    for i, run in enumerate(runs):
        steps, _ = run.series(present[0])
        at = _num(steps[-1]) if steps else MISSING
        rows.append([_run_label(run, i), at, *(_num(run.last(m)) for m in present)])
    header = ["run", "step", *(m.removeprefix("eval_gen/") for m in present)]
    return f"<h2>Generation metrics (last evaluation)</h2>{_table(header, rows, numeric_from=1)}"


def _samples(runs: Sequence[RunData]) -> str:
    parts = []
    for run in runs:
        if not run.samples:
            continue
        last_step = max(s.get("step", 0) for s in run.samples)
        shown = [s for s in run.samples if s.get("step", 0) == last_step][:SAMPLE_ROWS]
        verdict = {True: "yes", False: "no", None: MISSING}
        rows = [
            [
                _e(s.get("prompt", "")),
                _e(s.get("generation", s.get("policy", ""))),
                _e(s.get("chosen", "")),
                _e(verdict.get(s.get("answer_correct"), MISSING)),
            ]
            for s in shown
        ]
        table = _table(["prompt", "generation", "chosen", "correct"], rows, numeric_from=4)
        parts.append(f"<h3>{_e(run.name)} at step {_num(float(last_step))}</h3>{table}")
    if not parts:
        return ""
    return "<h2>Eval samples</h2>" + "".join(parts)


def render_page(
    runs: Sequence[RunData], training_plots: Sequence[Plot], generation_plots: Sequence[Plot]
) -> str:
    title = "cpo report: " + ", ".join(r.name for r in runs)
    body = "".join(
        [
            f"<h1>{_e(title)}</h1>",
            _summary(runs),
            _warnings(runs),
            _differences(runs),
            _plots("Training", training_plots),
            _generation_table(runs),
            _plots("Generations", generation_plots),
            _samples(runs),
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>{body}</body></html>\n"
    )
