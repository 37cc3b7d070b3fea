"""Merging LoRA adapters into their base model, checked before anything is saved or pushed.

Merges go wrong in ways that only show in what the model computes: adapter keys wrapped twice
(`base_model.model.base_model.model.…`, a PeftModel inside another one; such a file loads as
"no adapter"), merged weights that do not match the adapter, a cast to a smaller dtype that
overflows or garbles. So a merge is judged by its outputs: the answer log-probabilities of a
few held-out pairs, through the engine's own forward (`sequence_logps`), with the adapter model
and with the merged model in the dtype it is saved in. Beyond a per-dtype tolerance, stated in
nats per answer token, the merge is refused with the numbers.

The merge is first done in place with the adapter layers kept (`merge_adapter`), so a refused
merge can be undone and the adapter saved instead; the check is then repeated on the unloaded
(and possibly cast) model that is actually saved.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from cpo_cli import console
from cpo_cli.errors import MergeCheckError
from cpo_cli.merge_report import MergeCheck, write_report

if TYPE_CHECKING:
    import torch

    from cpo_cli.engine.build import Run

#: Largest allowed |Δ log-prob| per answer token between the adapter model (in its own dtype)
#: and the merged model, by the dtype the merged weights are saved in. float32 differences come
#: from summation order only; bf16/fp16 leave room for the rounding of the weights themselves
#: (measured figures: docs/architecture.md, "Publishing").
TOLERANCE_NATS_PER_TOKEN: dict[str, float] = {
    "float64": 1e-6,
    "float32": 1e-3,
    "bfloat16": 0.1,
    "float16": 0.02,
}
#: how many held-out pairs (each: chosen and rejected answer) the check scores
CHECK_PAIRS = 4
DOUBLE_WRAPPED = "base_model.model.base_model.model."


class MergeRefused(MergeCheckError):
    """A refused merge, with its numbers. `adapter_intact`: the adapter model was restored
    and can be saved as it is."""

    def __init__(self, check: MergeCheck, *, adapter_intact: bool) -> None:
        super().__init__(
            f"LoRA merge refused: {check.summary()}",
            hint="the merged weights were neither saved nor pushed; publish the adapter as it "
            "is (no --merge, peft.merge_at_end: false), or look into the adapter and its base",
        )
        self.check = check
        self.adapter_intact = adapter_intact


def adapter_key_problems(keys: Iterable[str]) -> list[str]:
    """Malformed adapter weight names: wrapped twice (`base_model.model.base_model.model.`)."""
    doubled = sorted(k for k in keys if DOUBLE_WRAPPED in k)
    if not doubled:
        return []
    return [
        f"{len(doubled)} adapter weights are wrapped twice (e.g. {doubled[0]}): the adapter was "
        "built on a model that already had one, and would load as no adapter at all"
    ]


def merge_and_check(
    peft_model: Any,
    rows: Any,
    *,
    collate_settings: Mapping[str, Any],
    chunk_size: int,
    pairs_from: str,
    dtype: str | None = None,
) -> tuple[Any, MergeCheck]:
    """The merged model (cast to `dtype` when given) and its check; raises `MergeRefused`.

    `rows`: prepared pairs (the first `CHECK_PAIRS` are scored); `collate_settings`: the
    keyword arguments of `collate_pairs` that training used (`loader_settings`). The merge is
    checked in the adapter's dtype (tight tolerance: only summation order differs), then the
    model as saved, in `dtype`, with that dtype's tolerance."""
    import torch
    from peft import get_peft_model_state_dict

    from cpo_cli.data.collate import collate_pairs

    reference_dtype = _dtype_name(_param_dtype(peft_model))
    target = dtype or reference_dtype
    nan = float("nan")
    check = MergeCheck(
        passed=False,
        pairs=min(CHECK_PAIRS, len(rows)),
        pairs_from=pairs_from,
        reference_dtype=reference_dtype,
        merge_max_diff=nan,
        merge_tolerance=_tolerance(reference_dtype),
        dtype=target,
        max_diff=nan,
        mean_diff=nan,
        tolerance=_tolerance(target),
    )
    problems = adapter_key_problems(get_peft_model_state_dict(peft_model))
    if check.pairs == 0:
        problems.append(f"no pairs in {pairs_from} to check the merge on")
    if problems:
        raise MergeRefused(replace(check, problems=tuple(problems)), adapter_intact=True)

    batch = collate_pairs([rows[i] for i in range(check.pairs)], **collate_settings)
    peft_model.eval()
    with torch.no_grad():
        reference = _per_token_logps(peft_model, batch, chunk_size)
        peft_model.merge_adapter()  # in place, adapter layers kept: undone below if refused
        merge_max, _ = _compare(reference, _per_token_logps(peft_model, batch, chunk_size))
        check = replace(check, merge_max_diff=merge_max)
        if not merge_max <= check.merge_tolerance:
            peft_model.unmerge_adapter()
            raise MergeRefused(check, adapter_intact=True)
        merged = peft_model.unload()
        if target != reference_dtype:
            merged = merged.to(getattr(torch, target))
        saved_max, saved_mean = _compare(reference, _per_token_logps(merged, batch, chunk_size))
    check = replace(check, max_diff=saved_max, mean_diff=saved_mean)
    if not saved_max <= check.tolerance:
        raise MergeRefused(check, adapter_intact=False)
    return merged, replace(check, passed=True)


def _tolerance(dtype: str) -> float:
    return TOLERANCE_NATS_PER_TOKEN.get(dtype, TOLERANCE_NATS_PER_TOKEN["float16"])


def merge_at_end(run: Run) -> tuple[Any, MergeRefused | None]:
    """`peft.merge_at_end` for the training loop: (merged model, None) when the check passes;
    (the adapter model, the refusal) when it fails and the adapter could be restored, so the
    adapter is saved and the refusal raised after. The report goes to `merge_check.json`."""
    from cpo_cli.engine.data import loader_settings

    accelerator = run.accelerator
    adapter = accelerator.unwrap_model(run.model, keep_torch_compile=False)
    if run.eval_dataset is not None:
        rows, pairs_from = run.eval_dataset, "data.eval"
    else:  # no held-out pairs: the first training pairs (said so in the report)
        rows, pairs_from = run.train_loader.dataset, "data.train"
    settings = loader_settings(
        adapter, run.tokenizer, run.training, is_encoder_decoder=run.is_encoder_decoder
    )
    try:
        merged, check = merge_and_check(
            adapter,
            rows,
            collate_settings=settings,
            chunk_size=int(run.training.logprob_chunk_size),
            pairs_from=pairs_from,
        )
    except MergeRefused as refusal:
        if accelerator.is_main_process:
            write_report(refusal.check, run.output_dir)
        if not refusal.adapter_intact:
            raise
        return run.model, refusal
    if accelerator.is_main_process:
        write_report(check, run.output_dir)
    console.info(f"LoRA merge checked: {check.summary()}")
    return merged, None


# ----------------------------------------------------------------------------- measuring


def _per_token_logps(model: Any, batch: dict[str, Any], chunk_size: int) -> torch.Tensor:
    """[2B] float64 mean log-prob per answer token, on the CPU."""
    from cpo_cli.engine.forward import sequence_logps

    device = _param_device(model)
    out = sequence_logps(model, {k: v.to(device) for k, v in batch.items()}, chunk_size=chunk_size)
    return (out.logps.double() / out.token_counts.clamp(min=1).double()).cpu()


def _compare(reference: torch.Tensor, merged: torch.Tensor) -> tuple[float, float]:
    """(max, mean) |Δ| per token; inf when either side is not finite."""
    import torch

    if not (torch.isfinite(reference).all() and torch.isfinite(merged).all()):
        return math.inf, math.inf
    diff = (merged - reference).abs()
    return float(diff.max()), float(diff.mean())


def _param_dtype(model: Any) -> Any:
    """The dtype the model computes in (its input embeddings', as the forward takes it)."""
    return model.get_input_embeddings().weight.dtype


def _param_device(model: Any) -> Any:
    return model.get_input_embeddings().weight.device


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")
