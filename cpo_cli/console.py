"""The one rich console: plain output off a terminal or with NO_COLOR, printing on the main
process only (so `accelerate launch` with N processes prints once)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, TextIO

from rich.console import Console

_quiet = False


def is_plain(stream: TextIO) -> bool:
    """The one terminal check: plain text for pipes, files, CI logs and `NO_COLOR`; rich boxes
    and colours only for a person at a terminal."""
    return not stream.isatty() or "NO_COLOR" in os.environ


def help_markup() -> Literal["rich"] | None:
    """Typer's help style for this output (`rich_markup_mode`)."""
    return None if is_plain(sys.stdout) else "rich"


def is_main_process() -> bool:
    """True on global rank 0 (read from the launcher's environment; no torch import)."""
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) in ("0", "-1")


def is_local_main_process() -> bool:
    """True on the first process of this machine."""
    return os.environ.get("LOCAL_RANK", "0") in ("0", "-1")


def processes_in_job() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def process_label() -> str:
    """`rank 3 on node-b`: who is speaking, in a run of several processes."""
    import socket

    return f"rank {os.environ.get('RANK', '0')} on {socket.gethostname()}"


def _make_console(stderr: bool = False) -> Console:
    plain = is_plain(sys.stderr if stderr else sys.stdout)
    return Console(
        stderr=stderr,
        no_color=plain,
        highlight=not plain,
        emoji=False,
        soft_wrap=plain,
        width=120 if plain else None,
    )


console = _make_console()
err_console = _make_console(stderr=True)


def set_quiet(quiet: bool) -> None:
    """`--quiet`: only warnings, errors and final results are printed."""
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def info(*objects: Any, **kwargs: Any) -> None:
    """Progress and status lines (main process only; silenced by --quiet)."""
    if is_main_process() and not _quiet:
        console.print(*objects, **kwargs)


def result(*objects: Any, **kwargs: Any) -> None:
    """Results the user asked for (main process only; printed even with --quiet)."""
    if is_main_process():
        console.print(*objects, **kwargs)


def warn(message: str) -> None:
    """A warning on stderr (main process only), prefixed so CI logs can grep for it."""
    if is_main_process():
        err_console.print(f"warning: {message}", markup=False, highlight=False)


def error(message: str) -> None:
    """An error line on stderr (main process only)."""
    if is_main_process():
        err_console.print(f"error: {message}", markup=False, highlight=False)


@contextmanager
def progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A progress callback `(done, total)` for a batched job: a live bar on a terminal, a line
    at each tenth of the way otherwise (CI logs), nothing with --quiet or off the main
    process."""
    if _quiet or not is_main_process():
        yield lambda done, total: None
        return
    if not console.is_terminal:
        last = [-1]

        def line(done: int, total: int) -> None:
            tenth = done * 10 // max(total, 1)
            if tenth != last[0]:
                last[0] = tenth
                console.print(f"{description}: {done}/{total}", markup=False, highlight=False)

        yield line
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(description, total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield advance


@contextmanager
def stdout_kept_for_results(enabled: bool = True) -> Iterator[TextIO]:
    """Keep stdout for one machine-readable result (`--json -`): while the command runs,
    everything else written to stdout — a library's logger or print, C code writing to fd 1 —
    goes to stderr. Yields the stream the result is written to."""
    results = sys.stdout
    if not enabled:
        yield results
        return
    try:
        fd: int | None = results.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None  # not a real file (a test's capture): swapping the Python object is enough
    saved_fd = None
    if fd is not None:
        results.flush()
        saved_fd = os.dup(fd)
        os.dup2(sys.stderr.fileno(), fd)
        results = open(saved_fd, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    previous, sys.stdout = sys.stdout, sys.stderr
    try:
        yield results
    finally:
        sys.stdout = previous
        results.flush()
        if fd is not None and saved_fd is not None:
            os.dup2(saved_fd, fd)
            os.close(saved_fd)
