"""The `cpo` command line. Commands live in `cpo_cli/commands/` and raise `CpoError`s; this is the
one place that turns them into messages and exit codes:

    0 ok, 1 user error (recipe, data, model, token, disk full...), 2 usage, 3 quality gate
    failed, 4 training diverged, 130 interrupted (Ctrl-C), 143 stopped by SIGTERM and 138 by
    SIGUSR1 (a checkpoint saved first).

Nothing here imports torch or transformers: `cpo --help` and `cpo recipe validate` start fast."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from typing import Annotated, Any, TextIO

import typer

from cpo_cli import __version__, console
from cpo_cli.commands import eval_cmd, prepare, push, report, train
from cpo_cli.commands.options import Quiet
from cpo_cli.commands.recipe import recipe_app
from cpo_cli.errors import EXIT_INTERRUPTED, EXIT_OK, CpoError

app = typer.Typer(
    name="cpo",
    help="Preference-tune causal language models with Contrastive Preference Optimization "
    "(CPO) and its variants (SimPO, CPO-SimPO, IPO, hinge, AlphaPO) from one YAML recipe.\n\n"
    "Exit codes: 0 ok, 1 user error, 2 usage error, 3 quality gate failed, 4 training diverged, "
    "130 interrupted, 143 stopped by SIGTERM, 138 stopped by SIGUSR1 (checkpoint saved).",
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=console.help_markup(),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        console.result(f"cpo {__version__}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            help="Print the version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
    quiet: Quiet = False,
) -> None:
    """cpo: declarative CPO training."""
    console.set_quiet(quiet)


# The command modules are owned by their features; their own Typer signatures apply.
app.command(name="prepare", epilog=prepare.EPILOG)(prepare.prepare)
app.command(name="train")(train.train)
app.command(name="eval")(eval_cmd.eval_cmd)
app.command(name="push")(push.push)
app.command(name="report")(report.report)
app.add_typer(recipe_app, name="recipe")


def report_error(err: CpoError) -> None:
    """Print a domain error: the first line as `error: ...`, the further lines as they are.

    In a run of several processes an error is printed once (see `CpoError.scope`): by the
    main process when every process agreed on it, else by the process it happened on (or the
    first process of its machine), prefixed with its rank and host."""
    lines = err.lines()
    if not lines:
        return
    if console.processes_in_job() > 1 and err.scope != "job":
        if err.scope == "node" and not console.is_local_main_process():
            return
        lines = [f"[{console.process_label()}] {lines[0]}", *lines[1:]]
    elif not console.is_main_process():
        return
    for i, line in enumerate(lines):
        text = f"error: {line}" if i == 0 else line
        console.err_console.print(text, markup=False, highlight=False)


class _RedactingStream:
    """A text stream that replaces token-shaped strings (`hf_...`, `sk-...`) before writing:
    click prints its own usage errors, echoing the argument it could not place, which may be a
    token pasted in the wrong spot. Everything else is the wrapped stream's."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        from cpo_cli.recipe.secrets import redact_tokens  # only once something is written

        return self._stream.write(redact_tokens(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code; user errors never show a traceback, and nothing
    written to stderr shows a token-shaped secret."""
    with contextlib.redirect_stderr(_RedactingStream(sys.stderr)):  # type: ignore[type-var]
        return _run(argv)


def _run(argv: Sequence[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        # Standalone mode: Typer prints usage errors itself (exit 2) and maps --help, --version
        # and Ctrl-C (130) to SystemExit; our domain errors come through untouched.
        app(args=args, prog_name="cpo", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return EXIT_OK
        return code if isinstance(code, int) else 1
    except CpoError as err:
        report_error(err)
        return err.exit_code
    except KeyboardInterrupt:
        console.error("interrupted")
        return EXIT_INTERRUPTED
    return EXIT_OK


def main() -> None:
    """Console-script entry point (`cpo`) and `python -m cpo_cli`."""
    sys.exit(run())
