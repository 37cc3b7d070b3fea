"""Domain errors. Code below the CLI raises these; only `cpo_cli.cli` turns them into messages
and exit codes, so library users get exceptions and terminal users get one clear line each."""

from __future__ import annotations

#: Exit codes, documented in the README. Typer/click uses 2 for usage errors itself.
EXIT_OK = 0
EXIT_USER_ERROR = 1
EXIT_USAGE = 2
EXIT_GATE_FAILED = 3
#: training stopped because its loss or gradients stayed NaN/inf (`max_nonfinite_steps`)
EXIT_DIVERGED = 4
EXIT_INTERRUPTED = 130
#: stopped by a signal after writing a checkpoint: 128 + the signal's number, as a shell reports
#: a process killed by it, so requeue scripts can tell preemption (SIGTERM) from a time-limit
#: warning (SIGUSR1, e.g. SLURM's `--signal=USR1@120`)
EXIT_SIGUSR1 = 138
EXIT_SIGTERM = 143


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none): what a
    one-line error shows of a library's failure."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class CpoError(Exception):
    """Base of every error a user can cause and fix; the message says what and how."""

    exit_code: int = EXIT_USER_ERROR
    #: who prints it in a run of several processes: "process" (the process it happened on,
    #: prefixed with its rank and host), "node" (the first process of each machine: every
    #: process there read the same files), "job" (the main process: already agreed by all)
    scope: str = "process"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def lines(self) -> list[str]:
        """The lines the CLI prints for this error (no traceback)."""
        out = [self.message]
        if self.hint:
            out.append(f"hint: {self.hint}")
        return out


class RecipeError(CpoError):
    """A recipe that cannot be used. Carries every problem found, one line each."""

    def __init__(self, source: str, problems: list[str]) -> None:
        n = len(problems)
        super().__init__(f"{source}: {n} problem{'s' if n != 1 else ''} in the recipe")
        self.source = source
        self.problems = list(problems)

    def lines(self) -> list[str]:
        return [self.message, *(f"  - {p}" for p in self.problems)]


class UsageError(CpoError):
    """A command-line option given a value the command cannot use (exit 2, like click's)."""

    exit_code = EXIT_USAGE


class DataError(CpoError):
    """A dataset that cannot be loaded or prepared (file, column, row or format problems).
    `details` are extra lines shown between the message and the hint (counts, examples)."""

    def __init__(
        self, message: str, *, hint: str | None = None, details: list[str] | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.details = list(details or [])

    def lines(self) -> list[str]:
        out = [self.message, *(f"  {line}" for line in self.details)]
        if self.hint:
            out.append(f"hint: {self.hint}")
        return out


class ModelLoadError(CpoError):
    """A model or tokenizer that cannot be loaded or does not fit the recipe."""


class CheckpointError(CpoError):
    """A checkpoint that cannot be written, found or resumed from."""


class OutputDirError(CpoError):
    """An output folder cpo may not write into: files it did not write, or another run in it."""


class DiskFullError(CpoError):
    """The disk filled up while writing; the message says what, where, and what is kept."""


class TrainingDiverged(CpoError):
    """The loss or gradient norm stayed non-finite for `max_nonfinite_steps` steps in a row."""

    exit_code = EXIT_DIVERGED


class TrainingInterrupted(CpoError):
    """Training ended early by Ctrl-C or a signal. Finished checkpoints are kept, nothing
    half-written is; the exit code says which (130 Ctrl-C, 143 SIGTERM, 138 SIGUSR1)."""

    def __init__(
        self, message: str, *, exit_code: int = EXIT_INTERRUPTED, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.exit_code = exit_code


class HubError(CpoError):
    """A Hugging Face Hub operation that failed (token, network, permission, conflict)."""


class MergeCheckError(CpoError):
    """A LoRA merge whose result does not compute what the adapter model computed (or whose
    adapter keys are malformed): the merged weights are neither saved nor pushed."""


class DependencyMissingError(CpoError):
    """An optional package the recipe asks for is not installed."""


class NotAvailableError(CpoError):
    """A command or feature that this version of cpo does not provide yet."""


class GateFailedError(CpoError):
    """`cpo eval --fail-under/--fail-over`: the model missed a quality gate."""

    exit_code = EXIT_GATE_FAILED
