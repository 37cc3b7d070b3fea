"""Micro-batches by a token budget (`training.max_tokens_per_batch`): pure functions over pair
lengths, no torch.

The budget counts the tokens a micro-batch puts through the model in its layout, padding
included: `packed` pads every `prompt | chosen | rejected` row to the longest, `pair_rows` pads
2B rows to the longest prompt + answer, `flat` and `varlen` have no padding (`varlen` runs the
prompt twice). Pairs taken in a length-grouped order fill a micro-batch while the budget holds.
"""

from __future__ import annotations

from collections.abc import Sequence

from cpo_cli.errors import DataError

#: (prompt, chosen, rejected) token counts of one pair
PairLength = tuple[int, int, int]


def batch_tokens(pairs: Sequence[PairLength], layout: str) -> int:
    """Tokens a micro-batch of these pairs puts through the model in `layout`."""
    if not pairs:
        return 0
    if layout == "packed":
        return len(pairs) * max(p + c + r for p, c, r in pairs)
    if layout == "flat":
        return sum(p + c + r for p, c, r in pairs)
    if layout == "varlen":
        return sum(2 * p + c + r for p, c, r in pairs)
    if layout == "pair_rows":
        return 2 * len(pairs) * max(p + max(c, r) for p, c, r in pairs)
    raise ValueError(f"unknown layout {layout!r}")


def token_budget_batches(
    order: Sequence[int],
    lengths: Sequence[PairLength],
    *,
    budget: int,
    max_pairs: int,
    layout: str,
) -> list[list[int]]:
    """Consecutive runs of `order` (pair indices) as micro-batches: each as long as its tokens
    stay within `budget` and it holds at most `max_pairs` pairs. A pair that alone exceeds the
    budget is an error (it could never run), raised before training starts."""
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        alone = batch_tokens([lengths[index]], layout)
        if alone > budget:
            raise DataError(
                f"training.max_tokens_per_batch: pair {index} alone needs {alone} tokens in the "
                f"`{layout}` layout, more than the budget of {budget}",
                hint="raise training.max_tokens_per_batch or lower training.max_length",
            )
        candidate = [*current, index]
        fits = batch_tokens([lengths[i] for i in candidate], layout) <= budget
        if current and (not fits or len(current) >= max_pairs):
            batches.append(current)
            candidate = [index]
        current = candidate
    if current:
        batches.append(current)
    return batches


def longest_first(batches: list[list[int]], costs: Sequence[int]) -> list[list[int]]:
    """The same batches with the costliest (`costs[i]` of batch i) swapped with the first, so
    an out-of-memory error shows at step 1, as the HF length-grouped sampler does."""
    if len(batches) < 2:
        return batches
    top = max(range(len(batches)), key=costs.__getitem__)
    out = list(batches)
    out[0], out[top] = out[top], out[0]
    return out
