"""The FlexAttention `BlockMask` of a prefix-sharing batch (`flat` or `packed` layout).

transformers' `flex_attention` implementation takes a ready `BlockMask` as the attention mask
(a 4D mask is passed through as is), so the model's own code runs unchanged. The mask is the
one `cpo_cli.engine.model_run.packed_attention_mask` writes densely: causal, inside one pair,
rejected never sees chosen, padding only itself; the kernel skips every 128×128 block that is
empty, so a row of many pairs costs about the sum of the pairs' own attention, not its square.

FlexAttention has no backward on a CPU (torch 2.13): there it serves evaluation and the probe;
training with it needs an accelerator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def sharing_block_mask(
    segment_ids: torch.Tensor,
    pair_ids: torch.Tensor | None,
    *,
    position_ids: torch.Tensor,
    sliding_window: int | None = None,
) -> Any:
    """A `BlockMask` over `[B, T]` segment ids (0 prompt, 1 chosen, 2 rejected, -1 padding)
    and pair ids (None: one pair per row).

    The mask is written with per-query bounds only — a key is seen when it lies in
    `[start of the query's pair, query]` and outside the query's "hole" (its pair's chosen
    answer, for a rejected query) — because inductor's CPU FlexAttention template fails to
    compile masks that gather by key index (torch 2.13)."""
    from torch.nn.attention.flex_attention import create_block_mask

    start, hole_start, hole_end = _query_bounds(segment_ids, pair_ids)
    pos = position_ids

    def mask_mod(b: Any, h: Any, q: Any, kv: Any) -> Any:
        in_hole = (kv >= hole_start[b, q]) & (kv < hole_end[b, q])
        allowed = (q >= kv) & (kv >= start[b, q]) & ~in_hole
        if sliding_window is not None:
            # a seen key's position: its column in the pair, less the hole when past it
            skipped = (kv >= hole_end[b, q]) * (hole_end[b, q] - hole_start[b, q])
            allowed = allowed & (pos[b, q] - (kv - start[b, q] - skipped) < sliding_window)
        return allowed

    batch, length = segment_ids.shape
    return create_block_mask(mask_mod, batch, None, length, length, device=segment_ids.device)


def _query_bounds(
    segment_ids: torch.Tensor, pair_ids: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per query column: the first column of its pair, and the [start, end) columns it must not
    see (its pair's chosen answer when it is a rejected token; empty otherwise)."""
    import torch

    seg = segment_ids
    group = pair_ids if pair_ids is not None else (seg < 0).long()  # padding: a group of its own
    length = seg.shape[1]
    col = torch.arange(length, device=seg.device).expand_as(seg)
    new_group = torch.ones_like(seg, dtype=torch.bool)
    new_group[:, 1:] = group[:, 1:] != group[:, :-1]
    new_run = new_group.clone()
    new_run[:, 1:] |= seg[:, 1:] != seg[:, :-1]
    zero = torch.zeros_like(col)
    start = torch.where(new_group, col, zero).cummax(-1).values
    run_start = torch.where(new_run, col, zero).cummax(-1).values
    rejected = seg == 2
    # a rejected run starts right after its chosen run: the chosen run starts where the
    # token before the rejected run started its own run
    before = (run_start - 1).clamp(min=0)
    chosen_start = run_start.gather(-1, before)
    never = torch.full_like(col, length)
    hole_start = torch.where(rejected, chosen_start, never)
    hole_end = torch.where(rejected, run_start, never)
    return start, hole_start, hole_end
