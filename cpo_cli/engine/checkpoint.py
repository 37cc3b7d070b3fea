"""Checkpoints that a run can resume from exactly, written so a crash never leaves a broken one.

A checkpoint folder `checkpoint-<step>/` holds:
- the model in the Hugging Face format (`save_pretrained`, safetensors) and the tokenizer, so any
  checkpoint loads with `from_pretrained` (and `cpo eval` can score it);
- accelerate's state without the model (optimizer, scheduler, RNG states of every process, the
  grad scaler) unless `save_only_model`;
- `trainer_state.json`: step counters, the data position, the best metric so far;
- `recipe.yaml`: the resolved recipe, secrets redacted.

It is written to a hidden `.tmp-checkpoint-<step>` folder first and renamed when complete; only
folders with a `trainer_state.json` (written last) count as checkpoints.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpo_cli.errors import CheckpointError

if TYPE_CHECKING:
    from accelerate import Accelerator

PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
RECIPE_FILE = "recipe.yaml"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX}(\d+)$")


@dataclass
class TrainerState:
    """Everything besides tensors that a resumed run needs to carry on where it stopped."""

    #: optimizer steps taken
    global_step: int = 0
    #: the epoch in progress (0-based) and how many of its micro-batches are done
    epoch: int = 0
    batches_done_in_epoch: int = 0
    best_metric: float | None = None
    #: the optimizer step of the best evaluation, and the checkpoint saved at that step
    best_step: int | None = None
    best_checkpoint: str | None = None
    last_eval_step: int | None = None
    #: every logged record, in order (also in metrics.jsonl)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    #: the shape of the run that saved it, to resume the data position exactly elsewhere
    #: (None in checkpoints written before cpo recorded them)
    num_processes: int | None = None
    per_device_train_batch_size: int | None = None
    batches_per_epoch: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_file(cls, path: Path) -> TrainerState:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"cannot read {path}: {exc}") from exc
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def checkpoint_step(path: Path) -> int | None:
    m = _CHECKPOINT_RE.match(path.name)
    return int(m.group(1)) if m else None


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first."""
    if not output_dir.is_dir():
        return []
    found = [
        p
        for p in output_dir.iterdir()
        if p.is_dir() and checkpoint_step(p) is not None and (p / STATE_FILE).is_file()
    ]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0)


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def resolve_resume(resume_from_checkpoint: str | bool | None, output_dir: Path) -> Path | None:
    """`resume_from_checkpoint`: None/false → start fresh; true/"last"/"latest" → the newest
    complete checkpoint in output_dir; anything else is a path to a checkpoint folder."""
    value = resume_from_checkpoint
    if (
        value is None
        or value is False
        or (isinstance(value, str) and value.strip().lower() in ("", "false", "none"))
    ):
        return None
    latest_words = ("true", "last", "latest")
    if value is True or (isinstance(value, str) and value.strip().lower() in latest_words):
        found = latest_checkpoint(output_dir)
        if found is None:
            raise CheckpointError(
                f"training.resume_from_checkpoint={value!r}: no checkpoint in {output_dir}",
                hint="train without resume_from_checkpoint first, or give a checkpoint path",
            )
        return found
    path = Path(str(value)).expanduser()
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(
            f"training.resume_from_checkpoint: {path} is not a complete cpo checkpoint "
            f"(no {STATE_FILE})",
            hint=f"point it at a {PREFIX}<step> folder, or use 'latest'",
        )
    return path


def save_model(
    accelerator: Accelerator,
    model: Any,
    tokenizer: Any,
    directory: Path,
    *,
    save_on_each_node: bool = False,
) -> None:
    """The model (or LoRA adapters) in the Hugging Face format + the tokenizer. Call on every
    process: gathering a sharded state dict is collective (FSDP, ZeRO-3: the main process gets
    the whole of it); only the main process writes, or each machine's main process with
    `save_on_each_node` (plain and DDP runs, where every process holds the whole model)."""
    from cpo_cli.engine.ranks import writes_files

    writer = writes_files(accelerator, save_on_each_node)
    # keys as the plain model names them (torch.compile's wrapper adds "_orig_mod.")
    gathered = accelerator.get_state_dict(model) or {}
    state_dict = {key.removeprefix("_orig_mod."): value for key, value in gathered.items()}
    if writer:
        directory.mkdir(parents=True, exist_ok=True)
        unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
        # transformers 5 always writes safetensors (save_safetensors=false cannot be honoured)
        with _writes_on_this_rank(unwrapped, accelerator.is_main_process):
            unwrapped.save_pretrained(str(directory), state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(directory))


@contextmanager
def _writes_on_this_rank(model: Any, is_main_process: bool) -> Iterator[None]:
    """transformers 5's `save_pretrained` writes only on global rank 0 whatever its
    `is_main_process` says (`should_save_on_this_rank`). With `save_on_each_node` the first
    process of every machine must write: for this one call, on this one model object, it is
    told so (an instance attribute shadowing the method, removed afterwards)."""
    if is_main_process or not hasattr(model, "should_save_on_this_rank"):
        yield
        return
    model.should_save_on_this_rank = lambda is_main_process: is_main_process
    try:
        yield
    finally:
        del model.should_save_on_this_rank


def _owns_model_weights(accelerator: Accelerator) -> bool:
    """True when we write/read the model weights ourselves (plain and DDP runs); FSDP and
    DeepSpeed shard them, and their own accelerate format is what resumes them exactly."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type not in (
        DistributedType.FSDP,
        DistributedType.DEEPSPEED,
        DistributedType.MEGATRON_LM,
    )


def register_state_hooks(accelerator: Accelerator) -> None:
    """Keep accelerate from writing/reading a second copy of the model weights: ours are the
    `save_pretrained` files beside its state."""
    if not _owns_model_weights(accelerator):
        return

    def drop_weights(models: list[Any], weights: list[Any], output_dir: str) -> None:
        weights.clear()

    def drop_models(models: list[Any], input_dir: str) -> None:
        models.clear()

    accelerator.register_save_state_pre_hook(drop_weights)
    accelerator.register_load_state_pre_hook(drop_models)


def save_checkpoint(
    accelerator: Accelerator,
    model: Any,
    tokenizer: Any,
    state: TrainerState,
    output_dir: Path,
    *,
    recipe_yaml: str,
    save_only_model: bool,
    save_on_each_node: bool = False,
) -> Path:
    """Write `checkpoint-<global_step>` atomically and return its final path: on the main
    process's disk, or with `save_on_each_node` complete on every machine's own disk."""
    from cpo_cli.engine.ranks import writes_files

    writer = writes_files(accelerator, save_on_each_node)
    final = output_dir / f"{PREFIX}{state.global_step}"
    tmp = output_dir / f".tmp-{PREFIX}{state.global_step}"
    if writer:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    save_model(accelerator, model, tokenizer, tmp, save_on_each_node=save_on_each_node)
    if not save_only_model:
        accelerator.save_state(str(tmp / "accelerate"))
    accelerator.wait_for_everyone()
    if writer:
        (tmp / RECIPE_FILE).write_text(recipe_yaml, encoding="utf-8")
        _write_atomic(tmp / STATE_FILE, state.to_json())
        if final.exists():
            # a checkpoint from an earlier run at the same step: replace it only now that the
            # new one is complete
            old = output_dir / f".old-{PREFIX}{state.global_step}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def _write_atomic(path: Path, text: str) -> None:
    part = path.with_name(path.name + ".part")
    part.write_text(text, encoding="utf-8")
    os.replace(part, path)


def rotate_checkpoints(output_dir: Path, limit: int | None, *, keep: str | None = None) -> None:
    """Delete the oldest checkpoints beyond `save_total_limit`, never the best one (`keep`).
    Main process only."""
    if not limit or limit <= 0:
        return
    found = list_checkpoints(output_dir)
    protected = {Path(keep).resolve()} if keep else set()
    removable = [p for p in found if p.resolve() not in protected]
    excess = len(found) - limit
    for path in removable[: max(excess, 0)]:
        shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(accelerator: Accelerator, model: Any, path: Path) -> TrainerState:
    """Restore the model weights, and (unless the checkpoint is model-only) optimizer, scheduler
    and RNG states; return the saved counters."""
    state = TrainerState.from_file(path / STATE_FILE)
    has_state = (path / "accelerate").is_dir()
    if _owns_model_weights(accelerator):
        load_model_weights(accelerator.unwrap_model(model, keep_torch_compile=False), path)
    if has_state:
        accelerator.load_state(str(path / "accelerate"))
    elif not _owns_model_weights(accelerator):
        raise CheckpointError(
            f"{path} was saved with save_only_model and cannot be resumed under FSDP/DeepSpeed"
        )
    else:
        from cpo_cli import console

        console.warn(
            f"{path} holds the model only (save_only_model): the optimizer, schedule and "
            "random states start afresh, so the run will not match an uninterrupted one exactly"
        )
    return state


def has_optimizer_state(path: Path) -> bool:
    return (path / "accelerate").is_dir()


def check_checkpoint_files(path: Path, accelerator: Accelerator) -> None:
    """The files this process will read from checkpoint `path` are there (with
    `save_on_each_node` every machine reads its own copy): a clear error before any process
    starts loading, instead of one process failing halfway through a collective load."""
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"{path}: no {STATE_FILE} on this machine")
    if _owns_model_weights(accelerator) and not (path / "adapter_model.safetensors").is_file():
        _weight_files(path)  # raises when the weights are missing
    state = path / "accelerate"
    if state.is_dir() and _owns_model_weights(accelerator):
        missing = [n for n in ("optimizer.bin",) if not (state / n).is_file()]
        if missing:
            raise CheckpointError(
                f"{state}: {', '.join(missing)} missing; the checkpoint is incomplete"
            )
    elif state.is_dir() and not any(state.iterdir()):
        raise CheckpointError(f"{state} is empty; the checkpoint is incomplete")


def load_best_weights(accelerator: Accelerator, model: Any, path: Path) -> None:
    """The best checkpoint's weights into the (prepared) model: from its Hugging Face files in
    plain and DDP runs, from accelerate's sharded state under FSDP/DeepSpeed (collective)."""
    if _owns_model_weights(accelerator):
        load_model_weights(accelerator.unwrap_model(model, keep_torch_compile=False), path)
    else:
        accelerator.load_state(str(path / "accelerate"))


def load_model_weights(model: Any, directory: Path) -> None:
    """Load `save_pretrained` weights (full model or LoRA adapters) into an existing model."""
    from safetensors.torch import load_file

    if (directory / "adapter_model.safetensors").is_file():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(directory / "adapter_model.safetensors")))
        return
    files = _weight_files(directory)
    state: dict[str, Any] = {}
    for file in files:
        state.update(load_file(str(file)))
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise CheckpointError(
            f"{directory}: weights that the model does not have: "
            f"{', '.join(result.unexpected_keys[:5])}"
        )
    missing = [k for k in result.missing_keys if not _is_tied(model, k)]
    if missing:
        raise CheckpointError(
            f"{directory}: weights missing from the checkpoint: {', '.join(missing[:5])}"
        )


def _weight_files(directory: Path) -> list[Path]:
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return [directory / name for name in sorted(set(weight_map.values()))]
    raise CheckpointError(f"{directory}: no model.safetensors (or index) to load")


def _is_tied(model: Any, key: str) -> bool:
    """A parameter left out of the file because it shares storage with another one that is in
    it (e.g. lm_head tied to the input embeddings)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    if key not in params:
        return False
    ptr = params[key].data_ptr()
    return any(other != key and p.data_ptr() == ptr for other, p in params.items())
