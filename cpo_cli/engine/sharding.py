"""Work shared out across the processes of `accelerate launch` (generation, reward scoring):
each process takes every `world`-th item, and the results come back in item order on every
process. One process: no communication at all."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """This process's share of `n` items: every `world`-th index from `rank`, padded by
    repeating its last one (index 0 for an empty share) to `ceil(n / world)` indices, so every
    process runs the same number of batches (sharded models need every rank in each forward)."""
    if n == 0:
        return []
    share = list(range(rank, n, world))
    size = -(-n // world)
    filler = share[-1] if share else 0
    return share + [filler] * (size - len(share))


def my_share(n: int) -> list[int]:
    """`shard_indices` for this process (all of them without a process group)."""
    from accelerate import PartialState

    state = PartialState()
    return shard_indices(n, state.process_index, state.num_processes)


def gather_in_order(n: int, indices: Sequence[int], results: Sequence[Any]) -> list[Any]:
    """Every process's `(index, result)` collected on every process, back in index order
    (padding repeats collapse onto their index)."""
    from accelerate import PartialState

    pairs = list(zip(indices, results, strict=True))
    if PartialState().num_processes > 1:
        from accelerate.utils import gather_object

        pairs = gather_object(pairs)
    by_index = dict(pairs)
    return [by_index[i] for i in range(n)]
