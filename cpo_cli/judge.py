"""`cpo eval --reward-model`: a reward model scores the generations, the chosen answers and the
compared model's generations, so "better" is measured by a judge and not only by the policy's
own log-probs.

Any `AutoModelForSequenceClassification` with one output is a judge. Its input is the prompt and
the answer as one conversation (its tokenizer's chat template) or, without a template, as a
text pair (`tokenizer(prompt, answer)`, how e.g. DeBERTa reward models are fed). Scoring is
batched, on the device accelerate picks, and shared out across processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cpo_cli.errors import ModelLoadError, UsageError, first_line

REWARD_MEAN = "eval_reward/mean"
REWARD_CHOSEN_MEAN = "eval_reward/chosen_mean"
WIN_RATE_VS_CHOSEN = "eval_reward/win_rate_vs_chosen"
WIN_RATE_VS_COMPARE = "eval_reward/win_rate_vs_compare"
#: every judge metric, in table order (the last only with `--compare`)
REWARD_METRICS: tuple[str, ...] = (
    REWARD_MEAN,
    REWARD_CHOSEN_MEAN,
    WIN_RATE_VS_CHOSEN,
    WIN_RATE_VS_COMPARE,
)
#: longest judge input in tokens (prompt + answer) when the model states no limit
MAX_LENGTH = 4096


# --------------------------------------------------------------------------- pure maths


def win_rate(mine: Sequence[float], theirs: Sequence[float]) -> float:
    """The fraction of items where `mine` scores higher than `theirs`, a tie counting half."""
    if len(mine) != len(theirs) or not mine:
        raise ValueError("win_rate needs two equally long, non-empty lists of scores")
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(mine, theirs, strict=True))
    return wins / len(mine)


def reward_metrics(
    generations: Sequence[float],
    chosen: Sequence[float],
    compare: Sequence[float] | None = None,
) -> dict[str, float]:
    """Mean rewards and win rates of one model's generations (see `REWARD_METRICS`)."""
    metrics = {
        REWARD_MEAN: sum(generations) / len(generations),
        REWARD_CHOSEN_MEAN: sum(chosen) / len(chosen),
        WIN_RATE_VS_CHOSEN: win_rate(generations, chosen),
    }
    if compare is not None:
        metrics[WIN_RATE_VS_COMPARE] = win_rate(generations, compare)
    return metrics


# --------------------------------------------------------------------------- the judge


@dataclass
class RewardJudge:
    label: str
    model: Any
    tokenizer: Any
    max_length: int


def load_reward_model(name_or_path: str) -> RewardJudge:
    """The reward model and its tokenizer, on accelerate's device, in eval mode. Fails with a
    clear message for anything that is not a one-output sequence classifier."""
    from accelerate import PartialState
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except Exception as exc:
        raise ModelLoadError(
            f"--reward-model {name_or_path}: cannot load its config: {first_line(exc)}",
            hint="give a local folder or a Hub name of a sequence-classification reward model",
        ) from exc
    if getattr(config, "num_labels", None) != 1:
        raise UsageError(
            f"--reward-model {name_or_path}: the model has {config.num_labels} outputs; a "
            "reward model has exactly one (num_labels: 1)",
            hint="use a reward model (AutoModelForSequenceClassification with one output)",
        )
    device = PartialState().device
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForSequenceClassification.from_pretrained(
            name_or_path, dtype="float32" if device.type == "cpu" else "auto"
        )
    except Exception as exc:
        raise ModelLoadError(
            f"--reward-model {name_or_path}: cannot load it as a sequence classifier: "
            f"{first_line(exc)}"
        ) from exc
    if tokenizer.pad_token_id is None:  # batches need padding; the end token is the usual pad
        if tokenizer.eos_token is None:
            raise ModelLoadError(
                f"--reward-model {name_or_path}: its tokenizer has neither a pad nor an end "
                "token, so inputs cannot be batched"
            )
        tokenizer.pad_token = tokenizer.eos_token
    # the classifier reads the last non-padding token: it must know which id is padding
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    limits = [
        v
        for v in (
            getattr(tokenizer, "model_max_length", None),
            getattr(config, "max_position_embeddings", None),
        )
        if isinstance(v, int) and 0 < v < 10**9
    ]
    model.to(device).eval()
    return RewardJudge(name_or_path, model, tokenizer, min([MAX_LENGTH, *limits]))


def judge_input(tokenizer: Any, prompt: str, answer: str) -> str | tuple[str, str]:
    """What the judge reads for one answer: the conversation rendered by its chat template, or
    the (prompt, answer) text pair when its tokenizer has no template."""
    if getattr(tokenizer, "chat_template", None):
        conversation = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": answer},
        ]
        return str(tokenizer.apply_chat_template(conversation, tokenize=False))
    return (prompt, answer)


def _encode(judge: RewardJudge, inputs: Sequence[str | tuple[str, str]]) -> Any:
    common = {
        "padding": True,
        "truncation": True,
        "max_length": judge.max_length,
        "return_tensors": "pt",
    }
    if isinstance(inputs[0], tuple):
        firsts = [pair[0] for pair in inputs]
        seconds = [pair[1] for pair in inputs]
        return judge.tokenizer(firsts, seconds, **common)
    # the template already wrote any special tokens the model expects
    return judge.tokenizer(list(inputs), add_special_tokens=False, **common)


def score(
    judge: RewardJudge,
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    batch_size: int = 8,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[float]:
    """The judge's reward for each (prompt, answer), in order; batched, shared out across
    processes and gathered back on every process."""
    import torch

    from cpo_cli.engine.sharding import gather_in_order, my_share

    if len(prompts) != len(answers):
        raise ValueError("score needs one answer per prompt")
    mine = my_share(len(prompts))
    device = next(judge.model.parameters()).device
    results: list[float] = []
    with torch.no_grad():
        for start in range(0, len(mine), batch_size):
            batch = mine[start : start + batch_size]
            inputs = [judge_input(judge.tokenizer, prompts[i], answers[i]) for i in batch]
            encoded = _encode(judge, inputs).to(device)
            logits = judge.model(**encoded).logits
            results.extend(float(v) for v in logits[:, 0].float().cpu())
            if on_progress is not None:
                on_progress(min(start + batch_size, len(mine)), len(mine))
    return gather_in_order(len(prompts), mine, results)
