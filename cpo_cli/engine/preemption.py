"""SIGTERM and SIGUSR1, what SLURM, Kubernetes and other schedulers send before they kill a job.

During training the first signal only raises a flag: the loop finishes the optimizer step it is
in, writes a checkpoint, says where it is and how to resume, and exits 143 (SIGTERM) or 138
(SIGUSR1). A second signal stops at once, like Ctrl-C: nothing half-written is kept and the
finished checkpoints are untouched (renaming a finished checkpoint into place is never cut in
two: a signal there waits for it). Before training starts (loading the model) there is nothing
to save, and with `enable_jit_checkpoint: false` nothing is wanted: the first signal stops at
once.

A handler only sets a flag or raises (nothing else is safe there); the loop reads the flag at
its one host sync per optimizer step, where every process agrees on it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from cpo_cli.errors import EXIT_SIGTERM, EXIT_SIGUSR1, TrainingInterrupted

#: the signals handled, and the exit code each ends the run with
EXIT_CODES: dict[int, int] = {signal.SIGTERM: EXIT_SIGTERM, signal.SIGUSR1: EXIT_SIGUSR1}


class StopNow(BaseException):
    """Raised by the handler to stop at once. A BaseException, as KeyboardInterrupt is, so that
    no library's `except Exception` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """Installs the handlers for the length of a run and remembers the first signal."""

    def __init__(self, *, checkpoint_first: bool) -> None:
        self.checkpoint_first = checkpoint_first
        #: the first signal received while armed (None: none yet)
        self.received: int | None = None
        #: True while a signal can wait for the step to finish (the loop and the final save)
        self.armed = False
        self._critical = 0
        self._deferred: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.received or signal.SIGTERM, EXIT_SIGTERM)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None and self.armed and self.checkpoint_first:
            self.received = signum
            return
        first = self.received or signum
        if self._critical:
            self._deferred = first
            return
        raise StopNow(first)

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        """Handle the signals inside the block (main thread only; elsewhere a no-op)."""
        global _active
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for signum in EXIT_CODES:
            self._previous[signum] = signal.signal(signum, self._handle)
        _active = self
        try:
            yield self
        finally:
            _active = None
            for signum, previous in self._previous.items():
                signal.signal(signum, previous)
            self._previous.clear()


_active: StopSignals | None = None


def stopped_error(
    signum: int | None, when: str, saved: Path, *, resume: str
) -> TrainingInterrupted:
    """The error that ends a run stopped for a signal after saving `saved` (this process's
    signal or, with several processes, one that another process got)."""
    stop = signal.Signals(signum or signal.SIGTERM)
    return TrainingInterrupted(
        f"stopped by {stop.name} {when}; checkpoint saved: {saved}",
        exit_code=EXIT_CODES[stop],
        hint=f"resume with: {resume} (or `auto` in a requeue script)",
    )


@contextlib.contextmanager
def critical_section() -> Iterator[None]:
    """A block a second signal must not cut in two (renaming a finished checkpoint into place):
    the stop waits until the block is done."""
    active = _active
    if active is None:
        yield
        return
    active._critical += 1
    try:
        yield
    finally:
        active._critical -= 1
        if not active._critical and active._deferred is not None:
            signum, active._deferred = active._deferred, None
            raise StopNow(signum)
