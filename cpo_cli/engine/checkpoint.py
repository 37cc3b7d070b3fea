"""Checkpoints that a run can resume from exactly, written so a crash never leaves a broken one,
and read so that nothing in them can run code.

A checkpoint folder `checkpoint-<step>/` holds:
- the model in the Hugging Face format (`save_pretrained`, safetensors) and the tokenizer, so any
  checkpoint loads with `from_pretrained` (and `cpo eval` can score it);
- accelerate's state without the model (optimizer, RNG states of every process, the grad
  scaler) unless `save_only_model`; it is loaded with `torch.load(weights_only=True)`, which
  refuses anything but tensors and plain data;
- `scheduler.json`: the learning-rate schedule's state (JSON; accelerate would pickle it);
- `trainer_state.json`: step counters, the data position, the best metric so far;
- `recipe.yaml`: the resolved recipe, secrets redacted;
- `cpo_manifest.json`, written last: every file with its size and a sampled hash
  (`cpo_cli.engine.manifest`). It is what makes the folder a complete cpo checkpoint.

It is written to a hidden `.tmp-checkpoint-<step>` folder first and renamed when complete.
Only folders carrying a manifest are ever rotated or replaced; a resume checks the manifest and
the counters first and says which file is wrong.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpo_cli import console
from cpo_cli.engine import manifest
from cpo_cli.engine.outdir import create_partial
from cpo_cli.engine.trainer_state import TrainerState
from cpo_cli.errors import CheckpointError, first_line

if TYPE_CHECKING:
    from accelerate import Accelerator

PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"  # a TrainerState as JSON
RECIPE_FILE = "recipe.yaml"
SCHEDULER_FILE = "scheduler.json"
ACCELERATE_DIR = "accelerate"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX}(\d+)$")
#: files the HF Trainer (and so TRL) writes in its checkpoints, and cpo never does
_HF_TRAINER_FILES = ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth")


def checkpoint_step(path: Path) -> int | None:
    m = _CHECKPOINT_RE.match(path.name)
    return int(m.group(1)) if m else None


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoints cpo wrote in `output_dir` (they carry its manifest), oldest first. Whether
    they are undamaged is `checkpoint_problem`'s business."""
    if not output_dir.is_dir():
        return []
    found = [
        p
        for p in output_dir.iterdir()
        if p.is_dir() and checkpoint_step(p) is not None and manifest.is_marked(p)
    ]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0)


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete, undamaged cpo checkpoint in `output_dir`."""
    for path in reversed(list_checkpoints(output_dir)):
        if checkpoint_problem(path) is None:
            return path
    return None


def is_hf_trainer_checkpoint(path: Path) -> bool:
    """A checkpoint of the HF Trainer (or TRL, which uses it): never resumed as ours."""
    return not manifest.is_marked(path) and any((path / n).exists() for n in _HF_TRAINER_FILES)


def checkpoint_problem(path: Path) -> str | None:
    """None when `path` is a complete, undamaged cpo checkpoint; else what is wrong with it,
    naming the file."""
    if not path.is_dir():
        return "no such folder"
    if is_hf_trainer_checkpoint(path):
        return "a Hugging Face Trainer (TRL) checkpoint, not a cpo one"
    problem = manifest.problem(path)
    if problem is not None:
        return problem
    try:
        state = TrainerState.from_file(path / STATE_FILE)
    except CheckpointError as exc:
        return exc.message.replace(str(path / STATE_FILE), STATE_FILE)
    step = checkpoint_step(path)
    if step is not None and state.global_step != step:
        return f"{STATE_FILE} says global_step {state.global_step}, the folder says {step}"
    return None


@dataclass(frozen=True)
class ResumeChoice:
    """Where to resume from (None: start fresh), and one warning per checkpoint passed over."""

    path: Path | None
    warnings: tuple[str, ...] = ()


_NO_RESUME = ("", "false", "none", "no")
_LATEST = ("true", "last", "latest", "yes")


def resolve_resume(resume_from_checkpoint: str | bool | None, output_dir: Path) -> ResumeChoice:
    """`resume_from_checkpoint`: None/false: start fresh; true/`last`: the newest good checkpoint
    in output_dir (an error when there is none); `auto`: the same, or a fresh start when there is
    none; anything else: the path of one checkpoint folder, which must be good."""
    value = resume_from_checkpoint
    word = value.strip().lower() if isinstance(value, str) else None
    if value is None or value is False or word in _NO_RESUME:
        return ResumeChoice(None)
    if value is True or word in _LATEST or word == "auto":
        warnings: list[str] = []
        newest_first = sorted(_candidates(output_dir), key=lambda p: -(checkpoint_step(p) or 0))
        for path in newest_first:
            problem = checkpoint_problem(path)
            if problem is None:
                return ResumeChoice(path, tuple(warnings))
            warnings.append(f"passing over {path}: {problem}")
        if word == "auto":
            return ResumeChoice(None, tuple(warnings))
        passed = "; ".join(w.removeprefix("passing over ") for w in warnings)
        raise CheckpointError(
            f"training.resume_from_checkpoint={value!r}: no complete cpo checkpoint in "
            f"{output_dir}" + (f" ({passed})" if passed else ""),
            hint="train without resume_from_checkpoint first, give a checkpoint path, or use "
            "`auto` to start fresh when there is none",
        )
    path = Path(str(value)).expanduser()
    problem = checkpoint_problem(path)
    if problem is not None:
        hint = f"point it at a {PREFIX}<step> folder cpo wrote, or use `last`"
        if is_hf_trainer_checkpoint(path):
            hint = (
                f"to start from its weights instead, set model.name_or_path={path} and leave "
                "training.resume_from_checkpoint unset"
            )
        raise CheckpointError(
            f"training.resume_from_checkpoint: {path} cannot be resumed from: {problem}",
            hint=hint,
        )
    return ResumeChoice(path)


def _candidates(output_dir: Path) -> list[Path]:
    """`checkpoint-N` folders, ours or not (a foreign one is passed over with a warning)."""
    if not output_dir.is_dir():
        return []
    return [p for p in output_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None]


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
    scheduler: Any = None,
    save_on_each_node: bool = False,
) -> Path:
    """Write `checkpoint-<global_step>` atomically and return its final path: on the main
    process's disk, or with `save_on_each_node` complete on every machine's own disk. A failure
    (a full disk, a signal) leaves no partial folder behind and the earlier checkpoints
    untouched."""
    from cpo_cli.engine.disk import disk_full_as_error
    from cpo_cli.engine.ranks import writes_files

    writer = writes_files(accelerator, save_on_each_node)
    final = output_dir / f"{PREFIX}{state.global_step}"
    tmp = output_dir / f".tmp-{PREFIX}{state.global_step}"
    if writer and final.exists() and not manifest.is_marked(final):
        raise CheckpointError(
            f"{final} exists and was not written by cpo; it is not replaced",
            hint="move it away, or choose another training.output_dir",
        )
    try:
        kept = lambda: last_good_message(output_dir)  # noqa: E731
        with disk_full_as_error(final.name, output_dir, staging=tmp, kept=kept):
            _write_checkpoint(
                accelerator,
                model,
                tokenizer,
                state,
                tmp,
                final,
                scheduler,
                recipe_yaml=recipe_yaml,
                save_only_model=save_only_model,
                save_on_each_node=save_on_each_node,
            )
    except BaseException:
        if writer:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()
    return final


def _write_checkpoint(
    accelerator: Accelerator,
    model: Any,
    tokenizer: Any,
    state: TrainerState,
    tmp: Path,
    final: Path,
    scheduler: Any,
    *,
    recipe_yaml: str,
    save_only_model: bool,
    save_on_each_node: bool,
) -> None:
    from cpo_cli import __version__
    from cpo_cli.engine.preemption import critical_section
    from cpo_cli.engine.ranks import writes_files

    writer = writes_files(accelerator, save_on_each_node)
    if writer:
        create_partial(tmp)
    accelerator.wait_for_everyone()
    save_model(accelerator, model, tokenizer, tmp, save_on_each_node=save_on_each_node)
    if not save_only_model:
        accelerator.save_state(str(tmp / ACCELERATE_DIR))
    accelerator.wait_for_everyone()
    if not writer:
        return
    if scheduler is not None and not save_only_model:
        (tmp / SCHEDULER_FILE).write_text(
            json.dumps(scheduler.state_dict(), indent=1), encoding="utf-8"
        )
    (tmp / RECIPE_FILE).write_text(recipe_yaml, encoding="utf-8")
    (tmp / STATE_FILE).write_text(state.to_json(), encoding="utf-8")
    manifest.write_manifest(tmp, global_step=state.global_step, cpo_version=__version__)
    with critical_section():  # a second signal waits until the folder is in place
        _move_into_place(tmp, final)


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished folder to its final name; an earlier cpo checkpoint of the same step
    is replaced only now that the new one is complete."""
    if final.exists():
        old = final.with_name(f".old-{final.name}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    (final / manifest.PARTIAL_MARK).unlink(missing_ok=True)


def last_good_message(output_dir: Path) -> str:
    """What a failed run keeps, for its error message."""
    last = latest_checkpoint(output_dir)
    return f"last good checkpoint: {last}" if last else "no checkpoint was saved"


def recover_interrupted_replace(output_dir: Path) -> None:
    """Undo a crash between the two renames of `_move_into_place`: a complete `.old-checkpoint-N`
    without its `checkpoint-N` goes back; one whose replacement is in place goes."""
    if not output_dir.is_dir():
        return
    for old in output_dir.glob(f".old-{PREFIX}*"):
        if not manifest.is_marked(old):
            continue
        final = output_dir / old.name.removeprefix(".old-")
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, final)


def rotate_checkpoints(output_dir: Path, limit: int | None, *, keep: str | None = None) -> None:
    """Delete the oldest checkpoints beyond `save_total_limit`, never the best one (`keep`) and
    never a folder cpo did not write. Main process only."""
    if not limit or limit <= 0:
        return
    found = list_checkpoints(output_dir)
    protected = {Path(keep).resolve()} if keep else set()
    removable = [p for p in found if p.resolve() not in protected]
    excess = len(found) - limit
    for path in removable[: max(excess, 0)]:
        shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(
    accelerator: Accelerator, model: Any, path: Path, *, scheduler: Any = None
) -> TrainerState:
    """Restore the model weights, and (unless the checkpoint is model-only) optimizer, scheduler
    and RNG states; return the saved counters. `path` has passed `checkpoint_problem`. Only
    JSON, safetensors and `torch.load(weights_only=True)` are read: nothing here runs code."""
    state = TrainerState.from_file(path / STATE_FILE)
    has_state = (path / ACCELERATE_DIR).is_dir()
    if _owns_model_weights(accelerator):
        load_model_weights(accelerator.unwrap_model(model, keep_torch_compile=False), path)
    if has_state:
        _load_accelerate_state(accelerator, path / ACCELERATE_DIR)
        if scheduler is not None:
            _load_scheduler(scheduler, path / SCHEDULER_FILE)
    elif not _owns_model_weights(accelerator):
        raise CheckpointError(
            f"{path} was saved with save_only_model and cannot be resumed under FSDP/DeepSpeed"
        )
    else:
        console.warn(
            f"{path} holds the model only (save_only_model): the optimizer, schedule and "
            "random states start afresh, so the run will not match an uninterrupted one exactly"
        )
    return state


def _load_accelerate_state(accelerator: Accelerator, folder: Path) -> None:
    """accelerate's files, read with `weights_only=True`. accelerate swallows a failure to read
    the RNG states (the run would silently differ), so that file is checked first."""
    from accelerate.utils import load

    for planted in sorted(folder.glob("custom_checkpoint_*")):
        raise CheckpointError(
            f"{planted}: refused: cpo never writes this file, and accelerate would load it "
            "with pickle (able to run code)"
        )
    rng = folder / f"random_states_{accelerator.process_index}.pkl"
    current = rng
    try:
        if rng.is_file():
            load(rng, weights_only=True)
        current = folder
        accelerator.load_state(str(folder), load_kwargs={"weights_only": True})
    except Exception as exc:
        raise CheckpointError(f"{current}: {_load_failure(exc)}") from None


def _load_failure(exc: Exception) -> str:
    import pickle

    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc):
        return (
            "refused: it holds Python objects that loading would have to run as code (cpo "
            "only loads tensors and plain data, so it was not written by cpo)"
        )
    return f"cannot be loaded: {first_line(exc)}"


def _load_scheduler(scheduler: Any, path: Path) -> None:
    try:
        scheduler.load_state_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"{path}: cannot restore the schedule: {first_line(exc)}") from None


def has_optimizer_state(path: Path) -> bool:
    return (path / ACCELERATE_DIR).is_dir()


def load_best_weights(accelerator: Accelerator, model: Any, path: Path) -> None:
    """The best checkpoint's weights into the (prepared) model: from its Hugging Face files in
    plain and DDP runs, from accelerate's sharded state under FSDP/DeepSpeed (collective; read
    with `weights_only=True` like any resume)."""
    if _owns_model_weights(accelerator):
        load_model_weights(accelerator.unwrap_model(model, keep_torch_compile=False), path)
    else:
        _load_accelerate_state(accelerator, path / ACCELERATE_DIR)


def load_model_weights(model: Any, directory: Path) -> None:
    """Load `save_pretrained` weights (full model or LoRA adapters) into an existing model."""
    from safetensors.torch import load_file

    def read(file: Path) -> dict[str, Any]:
        try:
            return load_file(str(file))
        except Exception as exc:  # safetensors raises its own error type for damaged files
            raise CheckpointError(f"{file}: cannot be loaded: {first_line(exc)}") from None

    if (directory / "adapter_model.safetensors").is_file():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, read(directory / "adapter_model.safetensors"))
        return
    files = _weight_files(directory)
    state: dict[str, Any] = {}
    for file in files:
        state.update(read(file))
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
