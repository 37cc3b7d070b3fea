"""The model run under the log-prob forward: one batch through the model's own forward, the
answer-predicting positions gathered and scored (`run_sequence_logps` → `SequenceLogps`).

Prefix sharing runs each pair as `prompt | chosen | rejected` with position ids that restart
rejected at the end of the prompt, and a mask in which rejected never sees chosen. The mask
takes the form the model's attention takes: a dense `[B, 1, T, T]` additive mask
(`packed_attention_mask`) under `sdpa` / `eager`, a FlexAttention `BlockMask`
(`cpo_cli.engine.flex`) under `flex_attention`; a `varlen` batch carries no mask (the
restarting position ids say where each sequence starts).

Its own module, below both the layout probe and the public entry points (`engine.forward`):
the probe runs the model with it to see which layout agrees with plain rows, and
`forward.sequence_logps` runs it in the layout the probe chose. Whether to use our LM-head path
(`use_head`) is the caller's to say, so nothing here asks the probe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cpo_cli.engine.model_queries import (
    FLEX_ATTENTION,
    accepts,
    attention_implementation,
    compute_dtype,
    head_vocab_size,
    model_device,
    router_loss_enabled,
    sliding_window_size,
    softcap,
)

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class SequenceLogps:
    """Per-sequence results of one forward; index i < B is chosen pair i, B + i rejected pair i."""

    #: [2B] float32 summed log-probs of the answer tokens (differentiable)
    logps: torch.Tensor
    #: [2B] number of scored answer tokens
    token_counts: torch.Tensor
    #: [2B] float32 sum of raw logits over answer-predicting positions × vocabulary (detached)
    logit_sums: torch.Tensor
    vocab_size: int
    #: MoE router load-balancing loss (None for dense models)
    aux_loss: torch.Tensor | None = None

    @property
    def num_pairs(self) -> int:
        return int(self.logps.shape[0]) // 2

    def averaged(self) -> torch.Tensor:
        """[2B] per-token mean log-probs (ipo, simpo)."""
        return self.logps / self.token_counts.clamp(min=1)

    def chosen_nll(self) -> torch.Tensor:
        """Token-mean NLL over all chosen answer tokens of the batch (the CPO BC term)."""
        from cpo_cli.losses.total import chosen_nll

        b = self.num_pairs
        return chosen_nll(self.logps[:b].sum(), self.token_counts[:b].sum())

    def mean_logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) mean raw logit over answer-predicting positions and the vocabulary."""
        b = self.num_pairs
        counts = self.token_counts.to(self.logit_sums.dtype) * self.vocab_size
        return (
            self.logit_sums[:b].sum() / counts[:b].sum().clamp(min=1),
            self.logit_sums[b:].sum() / counts[b:].sum().clamp(min=1),
        )


def packed_attention_mask(
    segment_ids: torch.Tensor,
    dtype: torch.dtype,
    *,
    position_ids: torch.Tensor | None = None,
    sliding_window: int | None = None,
    pair_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """[B, 1, T, T] additive mask for `prompt | chosen | rejected` rows.

    A query sees an earlier (or the same) column whose segment is the prompt (0) or its own
    (and, with `pair_ids`, of its own pair); padding (-1) sees only itself, so no softmax row is
    empty. With a sliding window, keys further back than the window in *position* (not column)
    are hidden too.
    """
    import torch

    t = segment_ids.shape[1]
    col = torch.arange(t, device=segment_ids.device)
    seg_q, seg_k = segment_ids[:, :, None], segment_ids[:, None, :]
    allowed = (col[:, None] >= col[None, :]) & ((seg_k == 0) | (seg_k == seg_q))
    if pair_ids is not None:
        allowed &= pair_ids[:, :, None] == pair_ids[:, None, :]
    allowed &= (seg_q >= 0) & (seg_k >= 0)
    if sliding_window is not None and position_ids is not None:
        allowed &= (position_ids[:, :, None] - position_ids[:, None, :]) < sliding_window
    allowed |= torch.eye(t, dtype=torch.bool, device=segment_ids.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def run_sequence_logps(
    model: nn.Module,
    core: Any,
    batch: dict[str, torch.Tensor],
    chunk_size: int,
    *,
    use_head: bool,
) -> SequenceLogps:
    """Summed answer log-probs per sequence: through our chunked LM head on the last hidden
    state (`use_head`), else from the model's own full logits."""
    import torch

    from cpo_cli.engine.chunked_head import token_logps_and_logit_sums

    n_seqs = _num_sequences(batch)
    rows, cols = batch["target_rows"], batch["target_cols"]
    outputs = run_model(model, core, batch, want_hidden=use_head)
    if use_head:
        head, source = core.get_output_embeddings(), outputs.hidden_states[-1]
    else:
        head, source = None, outputs.logits
    token_logps, logit_sums = token_logps_and_logit_sums(
        source[rows, cols], batch["target_ids"], head, softcap(core), chunk_size
    )
    seqs = batch["target_seqs"]
    zeros = torch.zeros(n_seqs, dtype=torch.float32, device=token_logps.device)
    aux = getattr(outputs, "aux_loss", None) if router_loss_enabled(core) else None
    return SequenceLogps(
        logps=zeros.index_add(0, seqs, token_logps),
        token_counts=torch.bincount(seqs, minlength=n_seqs),
        logit_sums=zeros.index_add(0, seqs, logit_sums),
        vocab_size=int(head_vocab_size(core)),
        aux_loss=aux,
    )


def _num_sequences(batch: dict[str, torch.Tensor]) -> int:
    """2B, read from tensor shapes (never from values: no device sync)."""
    if "pair_lengths" in batch:  # flat
        return 2 * int(batch["pair_lengths"].shape[0])
    if "seq_lengths" in batch:  # varlen
        return int(batch["seq_lengths"].shape[0])
    rows = int(batch["input_ids"].shape[0])
    return 2 * rows if "segment_ids" in batch else rows  # packed: one row per pair


def run_model(
    model: nn.Module, core: Any, batch: dict[str, torch.Tensor], *, want_hidden: bool
) -> Any:
    """The model's own forward (so DDP/FSDP wrappers and PEFT hooks run as usual)."""
    kwargs: dict[str, Any] = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch.get("attention_mask"),  # varlen: none, the positions say it
        "use_cache": False,
    }
    if "segment_ids" in batch:
        kwargs["attention_mask"] = _sharing_mask(core, batch)
    if "position_ids" in batch:
        kwargs["position_ids"] = batch["position_ids"]
    if "decoder_input_ids" in batch:
        kwargs["decoder_input_ids"] = batch["decoder_input_ids"]
        kwargs["decoder_attention_mask"] = batch["decoder_attention_mask"]
    if want_hidden:
        kwargs["output_hidden_states"] = True
        if accepts(core, "logits_to_keep"):
            kwargs["logits_to_keep"] = 1  # the model's own head runs at one position only
    if router_loss_enabled(core):
        kwargs["output_router_logits"] = True
    if attention_implementation(core) == FLEX_ATTENTION and model_device(core).type == "cpu":
        import torch

        if torch.is_grad_enabled() and core.training:
            from cpo_cli.errors import ModelLoadError

            raise ModelLoadError(
                "model.attn_implementation: flex_attention has no backward pass on a CPU "
                "(torch's FlexAttention), so it cannot train here",
                hint="use model.attn_implementation=sdpa on a CPU; flex_attention trains on GPUs",
            )
        # inductor's CPU FlexAttention template fails to compile with symbolic lengths
        # (torch 2.13): compile each length statically instead of going dynamic
        with torch._dynamo.config.patch(automatic_dynamic_shapes=False):
            return model(**kwargs)
    return model(**kwargs)


def _sharing_mask(core: Any, batch: dict[str, torch.Tensor]) -> Any:
    """The prefix-sharing mask of a `packed` or `flat` batch in the form the model's attention
    takes: a FlexAttention BlockMask under flex_attention, else a dense additive 4D mask."""
    window = sliding_window_size(core)
    if attention_implementation(core) == FLEX_ATTENTION:
        from cpo_cli.engine.flex import sharing_block_mask

        return sharing_block_mask(
            batch["segment_ids"],
            batch.get("pair_ids"),
            position_ids=batch["position_ids"],
            sliding_window=window,
        )
    return packed_attention_mask(
        batch["segment_ids"],
        compute_dtype(core),
        position_ids=batch["position_ids"],
        sliding_window=window,
        pair_ids=batch.get("pair_ids"),
    )
