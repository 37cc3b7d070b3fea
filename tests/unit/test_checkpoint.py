"""Checkpoint folders: finding, rotating, resolving `resume_from_checkpoint`, atomic writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cpo_cli.engine.checkpoint import (
    STATE_FILE,
    TrainerState,
    latest_checkpoint,
    list_checkpoints,
    load_model_weights,
    resolve_resume,
    rotate_checkpoints,
    save_checkpoint,
)
from cpo_cli.errors import CheckpointError


def fake_checkpoint(out: Path, step: int, complete: bool = True) -> Path:
    path = out / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if complete:
        (path / STATE_FILE).write_text(TrainerState(global_step=step).to_json())
    return path


def test_only_complete_checkpoints_count_in_step_order(tmp_path: Path) -> None:
    for step in (10, 2, 30):
        fake_checkpoint(tmp_path, step)
    fake_checkpoint(tmp_path, 40, complete=False)  # crashed before its state file
    (tmp_path / ".tmp-checkpoint-50").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "checkpoint-2",
        "checkpoint-10",
        "checkpoint-30",
    ]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-30"


@pytest.mark.parametrize("value", [True, "true", "last", "latest", "LAST"])
def test_resume_latest(tmp_path: Path, value: Any) -> None:
    fake_checkpoint(tmp_path, 3)
    fake_checkpoint(tmp_path, 7)
    assert resolve_resume(value, tmp_path) == tmp_path / "checkpoint-7"


@pytest.mark.parametrize("value", [None, False, "", "false", "none"])
def test_no_resume(tmp_path: Path, value: Any) -> None:
    assert resolve_resume(value, tmp_path) is None


def test_resume_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        resolve_resume("last", tmp_path)
    with pytest.raises(CheckpointError, match="not a complete cpo checkpoint") as caught:
        resolve_resume(str(tmp_path / "nowhere"), tmp_path)
    assert "latest" in (caught.value.hint or "")
    path = fake_checkpoint(tmp_path, 5)
    assert resolve_resume(str(path), tmp_path) == path


def test_rotation_keeps_the_newest_and_the_best(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4, 5):
        fake_checkpoint(tmp_path, step)
    rotate_checkpoints(tmp_path, 2, keep=str(tmp_path / "checkpoint-1"))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-1", "checkpoint-5"]
    rotate_checkpoints(tmp_path, None)
    assert len(list_checkpoints(tmp_path)) == 2


def test_trainer_state_round_trip_ignores_unknown_keys(tmp_path: Path) -> None:
    state = TrainerState(
        global_step=4,
        epoch=1,
        batches_done_in_epoch=3,
        best_metric=0.5,
        log_history=[{"step": 1, "loss": 0.7}],
    )
    path = tmp_path / STATE_FILE
    path.write_text(state.to_json().replace('"epoch"', '"future_field": 1, "epoch"'))
    assert TrainerState.from_file(path) == state
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match=STATE_FILE):
        TrainerState.from_file(path)


@pytest.fixture
def accelerated(tiny_model_dir: Path) -> tuple[Any, Any]:
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    return accelerator, model


def test_a_failed_save_leaves_the_previous_checkpoint_and_no_new_one(
    tmp_path: Path, accelerated: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    accelerator, model = accelerated
    first = save_checkpoint(
        accelerator,
        model,
        None,
        TrainerState(global_step=1),
        tmp_path,
        recipe_yaml="model: {}\n",
        save_only_model=False,
    )
    assert (first / STATE_FILE).is_file() and (first / "recipe.yaml").is_file()
    assert (first / "accelerate").is_dir()

    def crash(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(accelerator, "save_state", crash)
    with pytest.raises(OSError):
        save_checkpoint(
            accelerator,
            model,
            None,
            TrainerState(global_step=2),
            tmp_path,
            recipe_yaml="",
            save_only_model=False,
        )
    assert list_checkpoints(tmp_path) == [first]
    assert not (tmp_path / "checkpoint-2").exists()


def test_saving_the_same_step_again_replaces_the_checkpoint(
    tmp_path: Path, accelerated: tuple[Any, Any]
) -> None:
    accelerator, model = accelerated
    for metric in (1.0, 2.0):
        save_checkpoint(
            accelerator,
            model,
            None,
            TrainerState(global_step=3, best_metric=metric),
            tmp_path,
            recipe_yaml="",
            save_only_model=True,
        )
    saved = TrainerState.from_file(tmp_path / "checkpoint-3" / STATE_FILE)
    assert saved.best_metric == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3"]


def test_model_weights_load_back_exactly(
    tmp_path: Path, accelerated: tuple[Any, Any], tiny_model_dir: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    accelerator, model = accelerated
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    path = save_checkpoint(
        accelerator,
        model,
        None,
        TrainerState(global_step=1),
        tmp_path,
        recipe_yaml="",
        save_only_model=True,
    )
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    load_model_weights(fresh, path)
    for (name, a), b in zip(model.named_parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b), name
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no model\.safetensors"):
        load_model_weights(fresh, path)
