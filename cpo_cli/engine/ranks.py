"""Several processes acting as one job: errors every process hears about, which process writes
files, and the few small collectives the engine needs.

A user error on one process (a data file or a checkpoint missing on one node) must reach the
user and stop every process promptly. Setup therefore runs in blocks that every process leaves
through one agreement: each process contributes its error (or none) to one `all_gather`; if any
failed, every process raises `ProcessFailures`, which the main process prints once, each
problem prefixed with the rank and host it happened on. No process is left waiting in a
collective for the others until the timeout. A block must not itself contain collectives that a
failed process would skip.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cpo_cli.errors import EXIT_USER_ERROR, CpoError, first_line


@dataclass(frozen=True)
class Failure:
    """What one process reports about its error."""

    rank: int
    host: str
    lines: tuple[str, ...]
    exit_code: int
    #: False for an unexpected exception (a bug): its traceback is on that process's stderr
    user_error: bool = True


def this_host() -> str:
    return socket.gethostname()


class ProcessFailures(CpoError):
    """Raised on every process when any process failed in a block they all go through. Only
    the main process prints it (`scope = "job"`): each distinct problem once, with the ranks and
    hosts it happened on."""

    scope = "job"

    def __init__(self, failures: list[Failure]) -> None:
        self.failures = sorted(failures, key=lambda f: f.rank)
        first = self.failures[0]
        super().__init__(_prefixed(first, [f for f in self.failures if f.lines == first.lines]))
        self.exit_code = first.exit_code

    def lines(self) -> list[str]:
        out: list[str] = []
        groups: dict[tuple[str, ...], list[Failure]] = {}
        for failure in self.failures:
            groups.setdefault(failure.lines, []).append(failure)
        for lines, same in groups.items():
            out.append(_prefixed(same[0], same))
            out.extend(lines[1:])
        return out


def _prefixed(first: Failure, same: list[Failure]) -> str:
    ranks = [f.rank for f in same]
    hosts = sorted({f.host for f in same})
    who = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {_spans(ranks)}"
    text = first.lines[0] if first.lines else "failed"
    if not first.user_error:
        text = f"internal error: {text} (its traceback is printed above)"
    return f"[{who} on {', '.join(hosts)}] {text}"


def _spans(numbers: list[int]) -> str:
    """[0, 1, 2, 5] → "0-2, 5"."""
    spans: list[str] = []
    start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        spans.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ", ".join(spans)


def _failure_of(error: BaseException, rank: int) -> Failure:
    if isinstance(error, CpoError):
        return Failure(rank, this_host(), tuple(error.lines()), error.exit_code)
    text = f"{type(error).__name__}: {first_line(error)}"
    return Failure(rank, this_host(), (text,), EXIT_USER_ERROR, user_error=False)


def gather_objects(accelerator: Any, obj: Any) -> list[Any]:
    """`obj` of every process, in rank order (just `[obj]` in a single-process run)."""
    if accelerator.num_processes <= 1:
        return [obj]
    import torch.distributed as dist

    gathered: list[Any] = [None] * accelerator.num_processes
    dist.all_gather_object(gathered, obj)
    return gathered


def raise_if_any_failed(accelerator: Any, error: BaseException | None) -> None:
    """The agreement: every process calls this with its own error (or None). Single process:
    its error is raised as is."""
    if accelerator.num_processes <= 1:
        if error is not None:
            raise error
        return
    mine = None if error is None else _failure_of(error, accelerator.process_index)
    failures = [f for f in gather_objects(accelerator, mine) if f is not None]
    if not failures:
        return
    if error is not None and not isinstance(error, CpoError):
        raise error  # a bug here: keep its traceback on this process
    raise ProcessFailures(failures) from error


@contextmanager
def on_every_process(accelerator: Any) -> Iterator[None]:
    """Run a setup block on every process and leave it together: if the block raised on any
    process, every process raises (see the module docstring)."""
    try:
        yield
    except Exception as exc:
        raise_if_any_failed(accelerator, exc)
        raise  # pragma: no cover - raise_if_any_failed always raises here
    raise_if_any_failed(accelerator, None)


def same_on_every_process(accelerator: Any, value: Any, what: str) -> None:
    """Fail (on every process) unless `value` is the same on every process."""
    values = gather_objects(accelerator, (value, this_host()))
    distinct = {repr(v) for v, _ in values}
    if len(distinct) > 1:
        shown = "; ".join(f"rank {i} on {host}: {v}" for i, (v, host) in enumerate(values))
        raise ProcessFailures(
            [Failure(0, this_host(), (f"{what} differs between processes ({shown})",), 1)]
        )


def writes_files(accelerator: Any, save_on_each_node: bool) -> bool:
    """Whether this process writes checkpoints and the final output: the main process, or with
    `save_on_each_node` the main process of each machine (each writes to its own disk)."""
    if save_on_each_node:
        return bool(accelerator.is_local_main_process)
    return bool(accelerator.is_main_process)


def reduce_max(accelerator: Any, value: int) -> int:
    """The largest `value` over all processes."""
    if accelerator.num_processes <= 1:
        return value
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([value], device=accelerator.device, dtype=torch.long)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def launched_processes() -> int:
    """WORLD_SIZE as the launcher set it (1 when not launched by a distributed launcher)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1
