"""`cpo push --merge`: the LoRA adapter of an output folder merged into its base model and
checked (`cpo_cli.engine.merge_check`) before anything goes up.

The base model and the check pairs come from the recipe saved in the folder (its `model`, and
`data.eval`, else `data.train`), loaded as training loaded them. Before merging, the adapter
file's weight names are checked (not wrapped twice) and every one of them must have been
applied to the base model: an adapter whose weights did not load would merge into the
unchanged base and pass any output comparison. The merged weights go to a temporary folder
that the upload reads; the output folder itself is only read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cpo_cli import console
from cpo_cli.errors import UsageError

if TYPE_CHECKING:
    from cpo_cli.merge_report import MergeCheck

#: what `--merge-dtype` accepts (default: the dtype the recipe loads the base model in)
MERGE_DTYPES = ("float32", "bfloat16", "float16")
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def merge_output_folder(output_dir: Path, dest: Path, *, dtype: str | None = None) -> MergeCheck:
    """Merge `output_dir`'s adapter into its base, check it, save it to `dest`; returns the
    check (also written as `dest/merge_check.json`). Raises `MergeRefused` with the numbers."""
    from peft import get_peft_model_state_dict

    from cpo_cli.engine.data import loader_settings, prepare_source
    from cpo_cli.engine.merge_check import MergeRefused, adapter_key_problems, merge_and_check
    from cpo_cli.evaluation import load_eval_model
    from cpo_cli.merge_report import write_report
    from cpo_cli.output_folder import find_recipe_file
    from cpo_cli.recipe import load_recipe

    output_dir = Path(output_dir)
    if dtype is not None and dtype not in MERGE_DTYPES:
        raise UsageError(f"--merge-dtype {dtype!r}: expected one of {', '.join(MERGE_DTYPES)}")
    if not (output_dir / "adapter_config.json").is_file():
        raise UsageError(
            f"--merge: {output_dir} holds no LoRA adapter (adapter_config.json)",
            hint="push a full model as it is, without --merge",
        )
    recipe_path = find_recipe_file(output_dir)
    if recipe_path is None:
        raise UsageError(
            f"--merge: {output_dir} has no recipe.yaml, so its base model and data are unknown",
            hint="push the adapter without --merge, or copy the training recipe into the folder",
        )
    recipe = load_recipe(recipe_path).recipe
    training = recipe.training
    file_keys = _adapter_file_keys(output_dir / ADAPTER_WEIGHTS)
    problems = adapter_key_problems(file_keys)
    if problems:
        raise _refused(problems, dtype)

    console.info(f"loading {recipe.model.name_or_path} with the adapter of {output_dir.name}")
    subject = load_eval_model(recipe, str(output_dir))
    applied = set(get_peft_model_state_dict(subject.model))
    missing = sorted(set(file_keys) - applied)
    if missing:
        raise _refused(
            [
                f"{len(missing)} adapter weights of {ADAPTER_WEIGHTS} were not applied to the "
                f"base model (e.g. {missing[0]})"
            ],
            dtype,
        )
    name, source = ("eval", recipe.data.eval) if recipe.data.eval else ("train", recipe.data.train)
    if source is None:
        raise UsageError("--merge: the saved recipe names no data to check the merge on")
    pairs = prepare_source(
        name, source, subject.tokenizer, training, is_encoder_decoder=subject.is_encoder_decoder
    )
    try:
        merged, check = merge_and_check(
            subject.model,
            pairs,
            collate_settings=loader_settings(
                subject.model,
                subject.tokenizer,
                training,
                is_encoder_decoder=subject.is_encoder_decoder,
            ),
            chunk_size=training.logprob_chunk_size,
            pairs_from=f"data.{name}",
            dtype=dtype,
        )
    except MergeRefused as refusal:
        raise MergeRefused(refusal.check, adapter_intact=True) from None  # the folder is intact
    merged.save_pretrained(str(dest))
    write_report(check, dest)
    console.info(f"LoRA merge checked: {check.summary()}")
    return check


def _adapter_file_keys(path: Path) -> list[str]:
    if not path.is_file():
        return []
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as weights:
        return list(weights.keys())


def _refused(problems: list[str], dtype: str | None) -> Exception:
    from cpo_cli.engine.merge_check import MergeRefused
    from cpo_cli.merge_report import MergeCheck

    nan = float("nan")
    check = MergeCheck(
        False, 0, "-", "-", nan, nan, dtype or "-", nan, nan, nan, problems=tuple(problems)
    )
    return MergeRefused(check, adapter_intact=True)
