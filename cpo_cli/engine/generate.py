"""`generate_during_eval`: a few held-out prompts answered by the policy at each evaluation, shown
beside the chosen answer so a human can see what the numbers mean."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cpo_cli.recipe.training import TrainingConfig

#: prompts sampled per evaluation (greedy, one at a time: cheap and deterministic)
NUM_SAMPLES = 4
MAX_NEW_TOKENS = 64


def generate_samples(
    model: Any,
    tokenizer: Any,
    eval_dataset: Any,
    training: TrainingConfig,
    *,
    is_encoder_decoder: bool,
    num_samples: int = NUM_SAMPLES,
) -> list[dict[str, str]]:
    """Greedy answers of the policy to the first `num_samples` eval prompts, at most
    `MAX_NEW_TOKENS` long (and no longer than `max_completion_length` when it is set)."""
    rows = eval_dataset.select(range(min(num_samples, len(eval_dataset))))
    limit = MAX_NEW_TOKENS
    if training.max_completion_length is not None:
        limit = min(limit, training.max_completion_length)
    answers = generate_answers(
        model,
        tokenizer,
        rows,
        is_encoder_decoder=is_encoder_decoder,
        max_new_tokens=limit,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    return [
        {
            "prompt": str(row.get("prompt", tokenizer.decode(row["prompt_input_ids"]))),
            "policy": answer,
            "chosen": str(row.get("chosen", tokenizer.decode(row["chosen_input_ids"]))),
        }
        for row, answer in zip(rows, answers, strict=True)
    ]


def generate_answers(
    model: Any, tokenizer: Any, rows: Any, *, is_encoder_decoder: bool, **options: Any
) -> list[str]:
    """The model's answer to each prepared row's prompt, decoded without special tokens. One
    prompt at a time, so no padding side can go wrong; `options` go to `model.generate`. The
    model is put back in training mode afterwards only if it was in it before."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    answers: list[str] = []
    try:
        with torch.no_grad():
            for row in rows:
                ids = torch.tensor([row["prompt_input_ids"]], device=device)
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **options)
                answer_ids = out[0] if is_encoder_decoder else out[0, ids.shape[1] :]
                answers.append(tokenizer.decode(answer_ids, skip_special_tokens=True))
    finally:
        if was_training:
            model.train()
    return answers


def write_samples(samples: list[dict[str, str]], path: Path, step: int) -> None:
    """Append this evaluation's samples to `eval_samples.jsonl` (one line per sample)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for sample in samples:
            f.write(json.dumps({"step": step, **sample}, ensure_ascii=False) + "\n")


def samples_table(samples: list[dict[str, str]], step: int) -> Any:
    from rich.table import Table

    table = Table(title=f"generations at step {step}", show_lines=True)
    for column in ("prompt", "policy", "chosen"):
        table.add_column(column, overflow="fold")
    for sample in samples:
        table.add_row(sample["prompt"], sample["policy"], sample["chosen"])
    return table
