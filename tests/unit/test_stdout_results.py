"""`--json -` keeps stdout for the JSON: whatever else writes to stdout while the command runs
(a library's logger bound to sys.stdout at import, a bare print, C code on fd 1) goes to stderr.
Found when DeepSpeed's import-time warning broke `cpo eval --json -` in the quickstart test."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from cpo_cli import console

CHILD = textwrap.dedent(
    """
    import logging, os, sys
    from cpo_cli import console

    with console.stdout_kept_for_results({enabled}) as out:
        handler = logging.StreamHandler(stream=sys.stdout)  # as DeepSpeed's logger binds it
        log = logging.getLogger("library")
        log.addHandler(handler)
        log.warning("library warning")
        print("stray print")
        os.write(1, b"fd-level write\\n")
        out.write('{{"result": 1}}\\n')
    print("after")
    """
)


def run_child(enabled: bool) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD.format(enabled=enabled)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def test_only_the_result_reaches_stdout_and_the_rest_goes_to_stderr() -> None:
    done = run_child(enabled=True)
    assert done.stdout == '{"result": 1}\nafter\n'  # stdout is whole again afterwards
    for noise in ("library warning", "stray print", "fd-level write"):
        assert noise in done.stderr


def test_disabled_leaves_stdout_alone() -> None:
    done = run_child(enabled=False)
    assert "library warning" in done.stdout and "stray print" in done.stdout


def test_a_captured_stdout_object_is_swapped_and_restored(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with console.stdout_kept_for_results() as out:
        print("noise")
        out.write("result\n")
    print("after")
    captured = capsys.readouterr()
    assert captured.out == "result\nafter\n"
    assert "noise" in captured.err
