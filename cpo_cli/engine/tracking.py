"""Metric sinks. `metrics.jsonl` is always written; tensorboard and wandb when `report_to` asks for
them. The loop talks to one `Tracker` and never asks which backends are on (no `if wandb:`)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cpo_cli.errors import DependencyMissingError
from cpo_cli.recipe.choices import ENGINE_TRACKERS

if TYPE_CHECKING:
    from cpo_cli.recipe.training import TrainingConfig

#: report_to names we can honour (the recipe's `ENGINE_TRACKERS`), with the package each needs
BACKENDS = {name: name for name in ENGINE_TRACKERS}


class Sink(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def warning(self, kind: str, message: str, step: int) -> None: ...
    def close(self) -> None: ...


class NullSink:
    """Does nothing: what non-main processes and `report_to: none` get."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def warning(self, kind: str, message: str, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlSink:
    """One JSON object per log event, appended and flushed, so a crash keeps every line so far.

    A fresh run starts the file anew; a resumed run keeps the lines up to the step it resumes
    from (later ones were logged after that checkpoint and will be logged again)."""

    def __init__(self, path: Path, *, resume_step: int | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        kept = _lines_up_to(path, resume_step) if resume_step is not None else []
        path.write_text("".join(kept), encoding="utf-8")
        self._file = path.open("a", encoding="utf-8")

    def log(self, metrics: dict[str, float], step: int) -> None:
        record = {"step": step, **{k: json_number(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def warning(self, kind: str, message: str, step: int) -> None:
        """A line of its own, `{"step", "warning": kind, "message"}`, beside the metrics."""
        record = {"step": step, "warning": kind, "message": message}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _lines_up_to(path: Path, step: int) -> list[str]:
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            if int(json.loads(line).get("step", 0)) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
        except (ValueError, AttributeError):
            continue  # a line cut short by a crash
    return kept


def json_number(value: float) -> float | str | None:
    """NaN and infinities are not JSON; write them as strings a reader can still parse."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class TensorBoardSink:
    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            # TensorBoard groups by the first path component; "train/" and "eval/" read better
            name = key[5:] if key.startswith("eval_") else key
            self._writer.add_scalar(
                f"{'eval' if key.startswith('eval_') else 'train'}/{name}", value, step
            )
        self._writer.flush()

    def warning(self, kind: str, message: str, step: int) -> None:
        self._writer.add_text(f"warnings/{kind}", message, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class WandbSink:
    def __init__(self, run_name: str | None, config: dict[str, Any], output_dir: Path) -> None:
        import wandb  # type: ignore[import-not-found]

        self._run = wandb.init(name=run_name, config=config, dir=str(output_dir), reinit=True)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._run.log(metrics, step=step)

    def warning(self, kind: str, message: str, step: int) -> None:
        import wandb

        self._run.alert(
            title=f"cpo: {kind} at step {step}", text=message, level=wandb.AlertLevel.WARN
        )

    def close(self) -> None:
        self._run.finish()


class Tracker:
    """Fans one `log` call out to every sink."""

    def __init__(self, sinks: list[Any]) -> None:
        self.sinks = sinks

    def log(self, metrics: dict[str, float], step: int) -> None:
        for sink in self.sinks:
            sink.log(metrics, step)

    def warning(self, kind: str, message: str, step: int) -> None:
        for sink in self.sinks:
            sink.warning(kind, message, step)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def requested_backends(report_to: str | Sequence[str] | None) -> list[str]:
    """`report_to` as a list of backend names; None/"none" → none, "all" → the installed ones."""
    if report_to is None:
        return []
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    names = [str(n).lower() for n in names]
    if "none" in names:
        return []
    if "all" in names:
        return [b for b, pkg in BACKENDS.items() if importlib.util.find_spec(pkg) is not None]
    return names  # the recipe rules accept only BACKENDS, all and none


def check_backends(report_to: str | Sequence[str] | None) -> list[str]:
    """Fail before training starts when a requested backend's package is missing."""
    names = requested_backends(report_to)
    for name in names:
        if importlib.util.find_spec(BACKENDS[name]) is None:
            raise DependencyMissingError(
                f"training.report_to asks for {name!r} but the {BACKENDS[name]} package is "
                "not installed",
                hint=f"pip install {BACKENDS[name]} (or pip install 'cpo-cli[{name}]'), "
                "or remove it from training.report_to",
            )
    return names


def tracker_outputs(training: TrainingConfig, output_dir: Path) -> list[str]:
    """Top-level names the trackers write into `output_dir` (recorded there as cpo's)."""
    names = requested_backends(training.report_to)
    out = []
    if "tensorboard" in names and not training.logging_dir:
        out.append("runs")
    if "wandb" in names:
        out.append("wandb")
    return out


def build_tracker(
    training: TrainingConfig,
    output_dir: Path,
    *,
    is_main_process: bool,
    config: dict[str, Any] | None = None,
    resume_step: int | None = None,
) -> Tracker:
    """The sinks for this run; only the main process writes anything."""
    names = check_backends(training.report_to)
    if not is_main_process:
        return Tracker([NullSink()])
    sinks: list[Any] = [JsonlSink(output_dir / "metrics.jsonl", resume_step=resume_step)]
    if "tensorboard" in names:
        # logging_dir None: `<output_dir>/runs` (as the schema says)
        log_dir = Path(training.logging_dir) if training.logging_dir else output_dir / "runs"
        sinks.append(TensorBoardSink(log_dir))
    if "wandb" in names:
        os.environ.setdefault("WANDB_SILENT", "true")
        sinks.append(WandbSink(training.run_name, config or {}, output_dir))
    return Tracker(sinks)
