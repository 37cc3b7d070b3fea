"""The log-prob forward: per-sequence answer log-probabilities without full-vocabulary logits.

TRL computes `[2B, T, V]` float32 logits and log-softmaxes all of them, although only the
answer tokens are scored. Here the model body runs once (the model's own forward, asked for
its last hidden state and for logits at a single position), the hidden states at the
answer-predicting positions are gathered, and the LM head + float32 log-softmax run on those
positions only, `chunk_size` at a time (`cpo_cli.engine.chunked_head`: no `[N, V]` softmax is
kept for the backward pass). Token log-probs are summed per sequence with `index_add`.

`logits/chosen` / `logits/rejected`: TRL 1.16 averages the raw logits over every position of
the padded chosen (rejected) rows — prompt and padding included — and the whole vocabulary,
so its value depends on how the batch was padded. We define it as the mean raw logit over the
answer-predicting positions and the whole vocabulary (after any final logit soft-capping):
the positions whose logits the loss uses, independent of padding and layout.

This module is the entry point callers use; the work is below it, each part with one owner:
`engine.model_run` (the model run, the prefix-sharing masks, `SequenceLogps`),
`engine.layout_probe` (which layout a model takes, probed once per model) and
`engine.model_queries` (small questions asked of the model). The model run sits below the
probe, which runs it, so the probe and this module import it without a cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cpo_cli.engine.layout_probe import model_support
from cpo_cli.engine.model_queries import core_model, head_vocab_size, text_config
from cpo_cli.engine.model_run import run_sequence_logps

if TYPE_CHECKING:
    import torch
    from torch import nn

    from cpo_cli.engine.model_run import SequenceLogps


def sequence_logps(
    model: nn.Module, batch: dict[str, torch.Tensor], *, chunk_size: int
) -> SequenceLogps:
    """Summed answer log-probs per sequence for a `collate_pairs` batch (either layout);
    `chunk_size` is the recipe's `training.logprob_chunk_size` (no default here)."""
    core = core_model(model)
    support = model_support(model)
    return run_sequence_logps(model, core, batch, chunk_size, use_head=support.head_ok)


def model_config(model: nn.Module) -> Any:
    """The (text) config of the transformers model under any DDP/FSDP/PEFT wrapper."""
    return text_config(core_model(model))


def vocab_size(model: nn.Module) -> int:
    """The LM head's output size (the model's vocabulary)."""
    return head_vocab_size(core_model(model))
