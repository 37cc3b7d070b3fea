"""Runs that fail loudly and lose nothing, through the real CLI entry point (`cpo_cli.cli.run`,
in this process) on the tiny model: divergence, NaN steps, signals arriving mid-save, foreign
files in the output folder, planted pickles, damaged checkpoints, a full disk. Real `cpo train`
subprocesses stopped by real signals, and two runs at once, are in test_faults_cli.py."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import TINY_RUN, Result, write_recipe

from cpo_cli.engine.checkpoint import checkpoint_problem
from cpo_cli.engine.manifest import write_manifest
from cpo_cli.errors import EXIT_DIVERGED, EXIT_SIGTERM

pytestmark = pytest.mark.usefixtures("private_cache")  # prepared pairs stay out of ~/.cache

#: four optimizer steps of four pairs on the tiny model, logged each step, nothing saved
FAULT_RUN = {**TINY_RUN, "max_steps": 4, "learning_rate": 1e-3, "disable_tqdm": True,
             "max_length": 128, "max_prompt_length": 64}  # fmt: skip
Cli = Callable[..., Result]


def recipe_file(tmp_path: Path, model_dir: Path, train: Path, out: Path, **training: Any) -> Path:
    path = tmp_path / f"recipe-{len(list(tmp_path.glob('recipe-*')))}.yaml"
    return write_recipe(
        path, model_dir, train=train, out=out, train_rows=32, **{**FAULT_RUN, **training}
    )


def train_cli(cli: Cli, recipe: Path, *overrides: str) -> Result:
    return cli("train", str(recipe), "--quiet", *overrides)


def records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def all_tensors(folder: Path) -> dict[str, Any]:
    """Every tensor cpo wrote under `folder`: safetensors files and accelerate's states (read
    as accelerate reads them: weights_only, numpy arrays allowed)."""
    from accelerate.utils import load
    from safetensors.torch import load_file

    found: dict[str, Any] = {}
    for path in folder.rglob("*"):
        if path.suffix == ".safetensors":
            found.update({f"{path}:{k}": v for k, v in load_file(str(path)).items()})
        elif path.suffix in (".bin", ".pkl", ".pt"):
            found.update(_tensors(load(path, weights_only=True), str(path)))
    return found


def _tensors(obj: Any, where: str) -> dict[str, Any]:
    import torch

    if torch.is_tensor(obj):
        return {where: obj} if obj.is_floating_point() else {}
    if isinstance(obj, dict):
        return {
            k: v for key, val in obj.items() for k, v in _tensors(val, f"{where}.{key}").items()
        }
    if isinstance(obj, (list, tuple)):
        return {
            k: v for i, val in enumerate(obj) for k, v in _tensors(val, f"{where}[{i}]").items()
        }
    return {}


# --------------------------------------------------------------------------- NaN guard


def test_a_divergent_run_exits_non_zero_naming_the_step_and_saves_nothing_non_finite(
    tiny_model_dir: Path, demo_train_path: Path, tmp_path: Path, cli: Cli
) -> None:
    """learning_rate 1e30: the loss is NaN/inf from step 2; three such steps in a row stop the
    run with exit 4. Every tensor written anywhere is finite; there is no final model."""
    out = tmp_path / "out"
    recipe = recipe_file(
        tmp_path, tiny_model_dir, demo_train_path, out,
        learning_rate=1e30, max_steps=10, save_strategy="steps", save_steps=1,
    )  # fmt: skip
    done = train_cli(cli, recipe)
    assert done.exit_code == EXIT_DIVERGED, done.stderr[-2000:]
    err = done.stderr
    assert "error: training diverged: the loss or gradient norm was NaN/inf at steps 2-4" in err
    assert f"last good checkpoint: {out / 'checkpoint-3'}" in err and "Traceback" not in err
    tensors = all_tensors(out)
    assert len(tensors) > 50  # the weights and the optimizer state of three checkpoints
    bad = [name for name, t in tensors.items() if not bool(t.isfinite().all())]
    assert bad == []
    assert not (out / "model.safetensors").exists()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [
        "checkpoint-1", "checkpoint-2", "checkpoint-3",
    ]  # fmt: skip
    summary = json.loads((out / "train_results.json").read_text())
    assert summary["status"] == "diverged" and summary["global_step"] == 4
    assert summary["skipped_steps"] == 3
    assert summary["metrics"]["grad_norm"] == "nan" or summary["metrics"]["loss"] == "nan"
    logged = records(out)
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    assert all("loss" not in r for r in logged[1:])  # filtered from the mean, not hidden below


def test_weights_that_overflow_are_never_saved(
    tiny_model_dir: Path, demo_train_path: Path, tmp_path: Path, cli: Cli
) -> None:
    """A learning rate past float32's range (1e39): step 1's loss and gradients are finite, but
    the update makes the weights inf/NaN. The checkpoint of step 1 is refused, nothing is
    written."""
    out = tmp_path / "out"
    recipe = recipe_file(
        tmp_path, tiny_model_dir, demo_train_path, out,
        learning_rate=1e39, save_strategy="steps", save_steps=1,
    )  # fmt: skip
    done = train_cli(cli, recipe)
    assert done.exit_code == EXIT_DIVERGED
    assert "error: training diverged: after step 1 the weights hold NaN/inf (" in done.stderr
    assert "so checkpoint-1 was not written; no checkpoint was saved" in done.stderr
    assert not list(out.glob("checkpoint-*")) and not list(out.glob("*.safetensors"))
    assert not list(out.glob(".tmp-*"))


@pytest.mark.parametrize("nan_filter", [True, False])
def test_nan_steps_are_skipped_counted_and_only_the_loss_is_filtered(
    nan_filter: bool,
    tiny_model_dir: Path,
    demo_train_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli: Cli,
) -> None:
    """The loss of steps 2 and 4 (the last) is made NaN: those updates are skipped; the log of
    step 2 leaves out the loss only when filtering, but shows every other metric; the final
    summary reports step 4's real (NaN) loss and two skipped steps."""
    import cpo_cli.engine.objective as step_module

    real = step_module.batch_loss_and_metrics
    calls = []

    def sometimes_nan(model: Any, batch: Any, training: Any, **weighting: Any) -> Any:
        loss, metrics = real(model, batch, training, **weighting)
        calls.append(1)
        return (loss * math.nan, metrics) if len(calls) in (2, 4) else (loss, metrics)

    monkeypatch.setattr(step_module, "batch_loss_and_metrics", sometimes_nan)
    out = tmp_path / "out"
    recipe = recipe_file(
        tmp_path, tiny_model_dir, demo_train_path, out, logging_nan_inf_filter=nan_filter
    )
    done = train_cli(cli, recipe)
    assert done.exit_code == 0, done.stderr[-2000:]
    logged = {r["step"]: r for r in records(out)}
    assert ("loss" in logged[2]) is not nan_filter
    assert logged[2]["grad_norm"] == "nan" and math.isfinite(logged[2]["rewards/margins"])
    assert math.isfinite(logged[3]["loss"])
    summary = json.loads((out / "train_results.json").read_text())
    assert summary["status"] == "completed" and summary["skipped_steps"] == 2
    assert summary["metrics"]["loss"] == "nan" and summary["metrics"]["grad_norm"] == "nan"
    assert not [k for k, t in all_tensors(out).items() if not bool(t.isfinite().all())]


def test_one_device_read_per_optimizer_step(
    tiny_model_dir: Path,
    demo_train_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli: Cli,
) -> None:
    """16 micro-batches in 4 optimizer steps, logging off: the engine reads the device 4 times
    (once per step) plus twice at the end (the weight check before the final save, the
    summary); a read per micro-batch would add 16. (The data order is built on the CPU and
    the layout probe runs once before training: neither is counted.)"""
    import sys

    import torch

    engine = str(Path(__import__("cpo_cli").__file__).parent / "engine")
    reads: list[str] = []

    def counting(name: str) -> Any:
        real = getattr(torch.Tensor, name)

        def read(self: Any, *args: Any) -> Any:
            caller = sys._getframe(1).f_code.co_filename
            function = sys._getframe(1).f_code.co_name
            setup = caller.endswith("data.py") or function in ("_probe", "_close")
            if caller.startswith(engine) and not setup:
                reads.append(f"{Path(caller).name}:{function}")
            return real(self, *args)

        return read

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    recipe = recipe_file(
        tmp_path, tiny_model_dir, demo_train_path, tmp_path / "out",
        per_device_train_batch_size=2, gradient_accumulation_steps=4, logging_strategy="no",
    )  # fmt: skip
    done = train_cli(cli, recipe)
    assert done.exit_code == 0, done.stderr[-2000:]
    monkeypatch.undo()
    per_step = [r for r in reads if r.endswith("check_step")]
    assert len(per_step) == 4
    assert sorted(set(reads) - set(per_step)) == [
        "guard.py:nonfinite_weights", "metric_means.py:means",
    ], reads  # fmt: skip
    assert len(reads) == 4 + 2, reads


# --------------------------------------------------------------------------- signals


def test_a_second_signal_during_the_preemption_save_stops_at_once_keeping_the_last_checkpoint(
    tiny_model_dir: Path,
    demo_train_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli: Cli,
) -> None:
    """A real SIGTERM to this process after step 3 asks for a checkpoint at the end of step 4;
    a second one arrives while that checkpoint is being written: the run stops at once (exit
    143), the half-written checkpoint-4 is gone and checkpoint-2 is intact."""
    import cpo_cli.engine.checkpoint as checkpoint
    import cpo_cli.engine.loop as loop

    real_log, real_save_model = loop._log, checkpoint.save_model

    def log_then_signal(run: Any, state: Any, *args: Any) -> None:
        real_log(run, state, *args)
        if state.global_step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    def save_model_then_signal(
        accelerator: Any, model: Any, tokenizer: Any, folder: Path, **options: Any
    ) -> None:
        real_save_model(accelerator, model, tokenizer, folder, **options)
        if folder.name == ".tmp-checkpoint-4":
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop, "_log", log_then_signal)
    monkeypatch.setattr(checkpoint, "save_model", save_model_then_signal)
    out = tmp_path / "out"
    recipe = recipe_file(
        tmp_path, tiny_model_dir, demo_train_path, out,
        max_steps=8, save_strategy="steps", save_steps=2,
    )  # fmt: skip
    done = train_cli(cli, recipe)
    assert done.exit_code == EXIT_SIGTERM, done.stderr[-2000:]
    err = done.stderr
    assert f"stopped by SIGTERM at step 4; last complete checkpoint: {out / 'checkpoint-2'}" in err
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".cpo")) == [
        "checkpoint-2", "metrics.jsonl", "train_results.json",
    ]  # fmt: skip
    assert checkpoint_problem(out / "checkpoint-2") is None
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_without_jit_checkpoint_a_signal_stops_at_once(
    tiny_model_dir: Path,
    demo_train_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli: Cli,
) -> None:
    import cpo_cli.engine.loop as loop

    real_log = loop._log

    def log_then_signal(run: Any, state: Any, *args: Any) -> None:
        real_log(run, state, *args)
        if state.global_step == 3:
            os.kill(os.getpid(), signal.SIGUSR1)

    monkeypatch.setattr(loop, "_log", log_then_signal)
    out = tmp_path / "out"
    recipe = recipe_file(
        tmp_path, tiny_model_dir, demo_train_path, out,
        save_strategy="steps", save_steps=2, enable_jit_checkpoint=False,
    )  # fmt: skip
    done = train_cli(cli, recipe)
    assert done.exit_code == 138, done.stderr[-2000:]
    assert f"stopped by SIGUSR1 at step 3; last complete checkpoint: {out / 'checkpoint-2'}" in (
        done.stderr
    )
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]


def test_a_signal_before_training_starts_stops_at_once(
    tiny_model_dir: Path,
    demo_train_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli: Cli,
) -> None:
    """While the model loads there is nothing to save: SIGTERM stops at once (exit 143), the
    output folder's lock is released."""
    import cpo_cli.engine.loop as loop

    def loading(loaded: Any) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the signal should have stopped the run")

    monkeypatch.setattr(loop, "build_run", loading)
    out = tmp_path / "out"
    recipe = recipe_file(tmp_path, tiny_model_dir, demo_train_path, out)
    done = train_cli(cli, recipe)
    assert done.exit_code == EXIT_SIGTERM
    assert "error: stopped by SIGTERM before training started; nothing was saved" in done.stderr
    assert not (out / ".cpo-lock").exists() and not list(out.glob("checkpoint-*"))


# --------------------------------------------------------------------------- output folder


def test_a_folder_with_foreign_files_is_refused_then_used_beside_them(
    tiny_model_dir: Path, demo_train_path: Path, tmp_path: Path, cli: Cli
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.md").write_text("my notes")
    theirs = out / "checkpoint-10"
    theirs.mkdir()
    (theirs / "weights.bin").write_text("my weights")
    recipe = recipe_file(
        tmp_path, tiny_model_dir, demo_train_path, out,
        max_steps=2, save_strategy="steps", save_steps=1,
    )  # fmt: skip
    done = train_cli(cli, recipe)
    assert done.exit_code == 1
    assert "holds files cpo did not write: checkpoint-10/, notes.md" in done.stderr
    assert "overwrite_output_dir=true" in done.stderr and "Traceback" not in done.stderr
    # a run that could save step 10 would have to replace their checkpoint-10
    done = train_cli(cli, recipe, "training.overwrite_output_dir=true", "training.max_steps=12")
    assert done.exit_code == 1
    assert "holds checkpoint-10/, which cpo did not write, and this run (steps 1-12)" in (
        done.stderr
    )
    overwrite = "training.overwrite_output_dir=true"
    done = train_cli(cli, recipe, overwrite)
    assert done.exit_code == 0, done.stderr[-2000:]
    assert "they are left alone" in done.stderr
    assert (out / "model.safetensors").is_file() and not (out / ".cpo-lock").exists()
    # resuming passes over their folder (one warning) and takes cpo's newest
    done = train_cli(
        cli, recipe, overwrite, "training.max_steps=3", "training.resume_from_checkpoint=last"
    )
    assert done.exit_code == 0, done.stderr[-2000:]
    assert f"passing over {theirs}: no cpo_manifest.json" in done.stderr
    assert json.loads((out / "train_results.json").read_text())["global_step"] == 3
    assert (out / "notes.md").read_text() == "my notes"
    assert (theirs / "weights.bin").read_text() == "my weights"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [
        "checkpoint-1", "checkpoint-10", "checkpoint-2", "checkpoint-3",
    ]  # fmt: skip


# --------------------------------------------------------------------------- checkpoints

_SENTINEL = "cpo-pickle-ran"


class _Payload:
    """Unpickling this runs a shell command (what a planted checkpoint file can do)."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> Any:
        return (subprocess.call, (["touch", str(self.sentinel)],))


def _plant(path: Path, sentinel: Path) -> None:
    path.write_bytes(pickle.dumps(_Payload(sentinel)))


def test_nothing_loaded_from_a_checkpoint_can_run_code(
    tiny_model_dir: Path, demo_train_path: Path, tmp_path: Path, cli: Cli
) -> None:
    out = tmp_path / "out"
    sentinel = tmp_path / _SENTINEL
    recipe = recipe_file(
        tmp_path, tiny_model_dir, demo_train_path, out,
        max_steps=2, save_strategy="steps", save_steps=2,
    )  # fmt: skip
    done = train_cli(cli, recipe)
    assert done.exit_code == 0, done.stderr[-2000:]
    checkpoint = out / "checkpoint-2"
    state = checkpoint / "accelerate"
    assert not list(state.glob("custom_checkpoint_*"))  # the schedule is JSON now
    resume = ["training.max_steps=3", "training.resume_from_checkpoint=last"]

    # accelerate's file for a registered scheduler, planted: an extra file, so not ours
    _plant(state / "custom_checkpoint_0.pkl", sentinel)
    done = train_cli(cli, recipe, *resume)
    assert done.exit_code == 1, done.stderr[-2000:]
    assert "accelerate/custom_checkpoint_0.pkl was not part of the checkpoint" in (done.stderr)
    # with a manifest forged to match, it is refused by name, never loaded
    write_manifest(checkpoint, global_step=2, cpo_version="forged")
    done = train_cli(cli, recipe, *resume)
    assert done.exit_code == 1, done.stderr[-2000:]
    assert "custom_checkpoint_0.pkl: refused: cpo never writes this file" in (done.stderr)
    assert not sentinel.exists()
    live = tmp_path / "custom_checkpoint_0.pkl"
    (state / "custom_checkpoint_0.pkl").rename(live)
    write_manifest(checkpoint, global_step=2, cpo_version="test")
    done = train_cli(cli, recipe, *resume)
    assert done.exit_code == 0, done.stderr[-2000:]

    # the RNG and optimizer states are read with weights_only=True, which refuses the pickle
    for name in ("random_states_0.pkl", "optimizer.bin"):
        original = (state / name).read_bytes()
        _plant(state / name, sentinel)
        write_manifest(checkpoint, global_step=2, cpo_version="forged")
        done = train_cli(cli, recipe, *resume)
        assert done.exit_code == 1, done.stderr[-2000:]
        err = done.stderr
        assert f"{state}" in err and "refused: it holds Python objects" in err
        assert not sentinel.exists()
        (state / name).write_bytes(original)

    # the planted file is live: unpickling it the way accelerate did (weights_only=False) runs it
    pickle.loads(live.read_bytes())
    assert sentinel.exists()


def test_a_damaged_checkpoint_given_by_path_is_one_error_naming_the_file(
    tiny_model_dir: Path, demo_train_path: Path, tmp_path: Path, cli: Cli
) -> None:
    out = tmp_path / "out"
    recipe = recipe_file(
        tmp_path, tiny_model_dir, demo_train_path, out,
        max_steps=2, save_strategy="steps", save_steps=1,
    )  # fmt: skip
    done = train_cli(cli, recipe)
    assert done.exit_code == 0, done.stderr[-2000:]
    with (out / "checkpoint-2" / "model.safetensors").open("r+b") as f:
        f.truncate(4096)
    (out / "checkpoint-1" / "accelerate" / "optimizer.bin").unlink()
    path = f"training.resume_from_checkpoint={out / 'checkpoint-2'}"
    done = train_cli(cli, recipe, "training.max_steps=3", path)
    assert done.exit_code == 1, done.stderr[-2000:]
    err = done.stderr.strip().splitlines()
    assert len(err) == 2 and err[1].startswith("hint: ")
    assert not (out / "train_results.json").exists()  # the first run's would be stale
    assert err[0] == (
        f"error: training.resume_from_checkpoint: {out / 'checkpoint-2'} cannot be resumed "
        "from: model.safetensors is damaged: 4096 bytes, the manifest says 822632"
    )
    done = train_cli(cli, recipe, "training.max_steps=3", "training.resume_from_checkpoint=last")
    assert done.exit_code == 1, done.stderr[-2000:]
    err = done.stderr  # both passed over: one error naming each problem
    assert "no complete cpo checkpoint in" in err and "model.safetensors is damaged" in err
    assert f"{out / 'checkpoint-1'}: accelerate/optimizer.bin is missing" in err
    # auto: nothing good to resume from, so a fresh start (the damaged folders stay as they are)
    done = train_cli(cli, recipe, "training.max_steps=3", "training.resume_from_checkpoint=auto")
    assert done.exit_code == 0, done.stderr[-2000:]
    assert json.loads((out / "train_results.json").read_text())["global_step"] == 3


# --------------------------------------------------------------------------- full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 6 MiB tmpfs (room for about two checkpoints of the tiny model); skipped where this
    process may not mount one."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_keeps_the_last_good_checkpoint(
    tiny_model_dir: Path,
    demo_train_path: Path,
    tmp_path: Path,
    small_disk: Path,
    cli: Cli,
) -> None:
    out = small_disk / "out"
    recipe = recipe_file(
        tmp_path, tiny_model_dir, demo_train_path, out,
        max_steps=6, save_strategy="steps", save_steps=1,
    )  # fmt: skip
    done = train_cli(cli, recipe)
    assert done.exit_code == 1, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    error = next(line for line in lines if line.startswith("error: "))
    assert error.startswith("error: disk full while writing checkpoint-")
    assert f" in {out} (" in error and " free; the partial files were removed; " in error
    kept = sorted(out.glob("checkpoint-*"))
    assert kept and error.endswith(f"last good checkpoint: {kept[-1]}")
    assert all(checkpoint_problem(p) is None for p in kept)
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    assert "Traceback" not in "\n".join(lines)
