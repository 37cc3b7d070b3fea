"""What the user sees while training: a rich progress bar (step, loss, accuracy, learning rate,
tokens/s, ETA) on a terminal; one plain line per log event otherwise (pipes, CI, disable_tqdm);
nothing with --quiet or on processes other than the main one."""

from __future__ import annotations

import time
from typing import Any

from cpo_cli import console


def format_metrics(step: int, total: int, metrics: dict[str, float]) -> str:
    """`step 10/100  loss 0.6931  rewards/accuracies 0.5 ...` — every metric, compact numbers."""
    parts = [f"step {step}/{total}"]
    parts += [f"{k} {_fmt(v)}" for k, v in metrics.items()]
    return "  ".join(parts)


def _fmt(value: float) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class NullProgress:
    def __enter__(self) -> NullProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def advance(self, step: int) -> None:
        pass

    def show_metrics(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def print(self, renderable: Any) -> None:
        pass


class PlainProgress(NullProgress):
    """One line per log/eval event, with an ETA from the average step time so far."""

    def __init__(self, total: int, start: int) -> None:
        self.total = total
        self.start_step = start
        self.started = time.perf_counter()
        self.step = start

    def advance(self, step: int) -> None:
        self.step = step

    def show_metrics(self, step: int, metrics: dict[str, float]) -> None:
        line = format_metrics(step, self.total, metrics)
        done = step - self.start_step
        if done > 0 and step < self.total:
            eta = (time.perf_counter() - self.started) / done * (self.total - step)
            line += f"  eta {eta:.0f}s"
        console.info(line, markup=False, highlight=False)

    def print(self, renderable: Any) -> None:
        console.info(renderable)


class RichProgress(NullProgress):
    """A live bar; log lines scroll above it."""

    def __init__(self, total: int, start: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.total = total
        self._progress = Progress(
            TextColumn("step"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console.console,
            transient=False,
        )
        self._task = self._progress.add_task("train", total=total, completed=start, stats="")

    def __enter__(self) -> RichProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(None, None, None)

    def advance(self, step: int) -> None:
        self._progress.update(self._task, completed=step)

    def show_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self._progress.console.print(
            format_metrics(step, self.total, metrics), markup=False, highlight=False
        )
        if "loss" in metrics:  # training metrics update the bar; eval ones only print
            stats = (
                f"loss {_fmt(metrics['loss'])}"
                f"  acc {_fmt(metrics.get('rewards/accuracies', float('nan')))}"
                f"  lr {metrics.get('learning_rate', 0.0):.2e}"
                f"  {metrics.get('tokens/s', 0.0):.0f} tok/s"
            )
            self._progress.update(self._task, stats=stats)

    def print(self, renderable: Any) -> None:
        self._progress.console.print(renderable)


def build_progress(
    total: int, start: int, *, enabled: bool, disable_tqdm: bool | None
) -> NullProgress:
    if not enabled or console.is_quiet() or not console.is_main_process():
        return NullProgress()
    if disable_tqdm or not console.console.is_terminal:
        return PlainProgress(total, start)
    return RichProgress(total, start)
