"""Checkpoint folders: finding, rotating, resolving `resume_from_checkpoint`, atomic writes, the
manifest that makes a folder a complete cpo checkpoint, and damaged or foreign folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cpo_cli.engine.checkpoint import (
    STATE_FILE,
    TrainerState,
    checkpoint_problem,
    latest_checkpoint,
    list_checkpoints,
    load_model_weights,
    resolve_resume,
    rotate_checkpoints,
    save_checkpoint,
)
from cpo_cli.engine.manifest import write_manifest
from cpo_cli.errors import CheckpointError


def fake_checkpoint(out: Path, step: int, complete: bool = True) -> Path:
    """A small but complete cpo checkpoint folder: a state file, a weights stand-in, the
    manifest written last (`complete=False`: the save never reached the manifest)."""
    path = out / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / STATE_FILE).write_text(TrainerState(global_step=step).to_json())
    (path / "model.safetensors").write_bytes(bytes(range(256)) * 1000)
    if complete:
        write_manifest(path, global_step=step, cpo_version="test")
    return path


def test_only_complete_checkpoints_count_in_step_order(tmp_path: Path) -> None:
    for step in (10, 2, 30):
        fake_checkpoint(tmp_path, step)
    fake_checkpoint(tmp_path, 40, complete=False)  # crashed before its manifest
    (tmp_path / ".tmp-checkpoint-50").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "checkpoint-2",
        "checkpoint-10",
        "checkpoint-30",
    ]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-30"


@pytest.mark.parametrize("value", [True, "true", "last", "latest", "LAST", "auto"])
def test_resume_latest(tmp_path: Path, value: Any) -> None:
    fake_checkpoint(tmp_path, 3)
    fake_checkpoint(tmp_path, 7)
    choice = resolve_resume(value, tmp_path)
    assert choice.path == tmp_path / "checkpoint-7" and choice.warnings == ()


@pytest.mark.parametrize("value", [None, False, "", "false", "none"])
def test_no_resume(tmp_path: Path, value: Any) -> None:
    fake_checkpoint(tmp_path, 3)
    assert resolve_resume(value, tmp_path).path is None


def test_auto_starts_fresh_when_there_is_nothing_to_resume(tmp_path: Path) -> None:
    assert resolve_resume("auto", tmp_path / "not-yet").path is None
    fake_checkpoint(tmp_path, 4, complete=False)
    choice = resolve_resume("auto", tmp_path)
    assert choice.path is None
    assert len(choice.warnings) == 1 and "checkpoint-4" in choice.warnings[0]


def test_resume_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no complete cpo checkpoint in"):
        resolve_resume("last", tmp_path)
    with pytest.raises(CheckpointError, match="cannot be resumed from: no such folder") as caught:
        resolve_resume(str(tmp_path / "nowhere"), tmp_path)
    assert "last" in (caught.value.hint or "")
    path = fake_checkpoint(tmp_path, 5)
    assert resolve_resume(str(path), tmp_path).path == path


def test_last_passes_over_damaged_and_foreign_checkpoints_with_one_warning_each(
    tmp_path: Path,
) -> None:
    good = fake_checkpoint(tmp_path, 10)
    truncated = fake_checkpoint(tmp_path, 20)
    with (truncated / "model.safetensors").open("r+b") as f:
        f.truncate(1000)
    hf = tmp_path / "checkpoint-30"  # what the HF Trainer / TRL write
    hf.mkdir()
    for name in ("trainer_state.json", "optimizer.pt", "scheduler.pt", "model.safetensors"):
        (hf / name).write_text("{}")
    fake_checkpoint(tmp_path, 40, complete=False)
    choice = resolve_resume("last", tmp_path)
    assert choice.path == good
    assert len(choice.warnings) == 3
    assert "checkpoint-40" in choice.warnings[0] and "no cpo_manifest.json" in choice.warnings[0]
    assert "checkpoint-30" in choice.warnings[1] and "Hugging Face Trainer" in choice.warnings[1]
    assert "checkpoint-20" in choice.warnings[2]
    assert "model.safetensors is damaged: 1000 bytes" in choice.warnings[2]
    assert latest_checkpoint(tmp_path) == good


def test_an_explicit_damaged_or_foreign_path_is_one_clear_error(tmp_path: Path) -> None:
    path = fake_checkpoint(tmp_path, 5)
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError) as caught:
        resolve_resume(str(path), tmp_path)
    assert caught.value.message.endswith("model.safetensors is missing")
    hf = tmp_path / "checkpoint-100"
    hf.mkdir()
    (hf / "trainer_state.json").write_text('{"global_step": 100}')
    (hf / "rng_state.pth").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="Hugging Face Trainer") as caught:
        resolve_resume(str(hf), tmp_path)
    assert f"model.name_or_path={hf}" in (caught.value.hint or "")


@pytest.mark.parametrize(
    ("state_text", "problem"),
    [
        ("{}", "global_step is missing"),
        (b"\x80\x04\x95binary", "cannot read"),
        ('{"global_step": "sixty", "epoch": 0, "batches_done_in_epoch": 0}', "global_step must"),
        ('{"global_step": 7, "epoch": 0, "batches_done_in_epoch": 0}', "says global_step 7"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_trainer_state_must_be_sound_and_match_the_folder(
    tmp_path: Path, state_text: str | bytes, problem: str
) -> None:
    """Even with a manifest made to match (edited by hand), a bad state file is refused."""
    path = fake_checkpoint(tmp_path, 60)
    target = path / STATE_FILE
    if isinstance(state_text, bytes):
        target.write_bytes(state_text)
    else:
        target.write_text(state_text)
    write_manifest(path, global_step=60, cpo_version="test")
    found = checkpoint_problem(path)
    assert found is not None and problem in found and STATE_FILE in found


def test_rotation_keeps_the_newest_and_the_best(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4, 5):
        fake_checkpoint(tmp_path, step)
    rotate_checkpoints(tmp_path, 2, keep=str(tmp_path / "checkpoint-1"))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-1", "checkpoint-5"]
    rotate_checkpoints(tmp_path, None)
    assert len(list_checkpoints(tmp_path)) == 2


def test_rotation_never_deletes_a_folder_cpo_did_not_write(tmp_path: Path) -> None:
    mine = tmp_path / "checkpoint-0"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own file")
    for step in (1, 2, 3):
        fake_checkpoint(tmp_path, step)
    rotate_checkpoints(tmp_path, 1)
    assert (mine / "notes.txt").read_text() == "my own file"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-3"]


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
    assert (first / "accelerate").is_dir() and checkpoint_problem(first) is None

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("something broke")

    monkeypatch.setattr(accelerator, "save_state", crash)
    with pytest.raises(RuntimeError):
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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]


def test_disk_full_while_saving_is_one_line_and_leaves_nothing_partial(
    tmp_path: Path, accelerated: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An injected OSError(ENOSPC) in the middle of a save (the tmpfs test in
    tests/integration/test_faults.py fills a real disk)."""
    import errno

    from cpo_cli.errors import DiskFullError

    accelerator, model = accelerated
    first = save_checkpoint(
        accelerator,
        model,
        None,
        TrainerState(global_step=1),
        tmp_path,
        recipe_yaml="",
        save_only_model=True,
    )

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(accelerator, "save_state", full)
    with pytest.raises(DiskFullError) as caught:
        save_checkpoint(
            accelerator,
            model,
            None,
            TrainerState(global_step=2),
            tmp_path,
            recipe_yaml="",
            save_only_model=False,
        )
    message = caught.value.message
    assert message.startswith(f"disk full while writing checkpoint-2 in {tmp_path} (")
    assert " written, the last file " in message
    assert " free; the partial files were removed; " in message
    assert message.endswith(f"last good checkpoint: {first}")
    assert "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]


def test_a_folder_cpo_did_not_write_is_never_replaced(
    tmp_path: Path, accelerated: tuple[Any, Any]
) -> None:
    accelerator, model = accelerated
    theirs = tmp_path / "checkpoint-3"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not written by cpo"):
        save_checkpoint(
            accelerator,
            model,
            None,
            TrainerState(global_step=3),
            tmp_path,
            recipe_yaml="",
            save_only_model=True,
        )
    assert (theirs / "notes.txt").read_text() == "mine"


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
    assert checkpoint_problem(tmp_path / "checkpoint-3") is None


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
    with (path / "model.safetensors").open("r+b") as f:
        f.write(b"\xff" * 16)  # a damaged header
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot be loaded"):
        load_model_weights(fresh, path)
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no model\.safetensors"):
        load_model_weights(fresh, path)
