"""The CLI shell: help, version, exit codes, and `cpo recipe validate|show|schema`, through the
real entry point (`run()`, which maps errors to messages and exit codes) in-process."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from support import Result

from cpo_cli import __version__
from cpo_cli.errors import EXIT_GATE_FAILED, GateFailedError

RECIPES = Path(__file__).parents[2] / "recipes"
Cli = Callable[..., Result]

GOOD = "model: {name_or_path: org/m}\ntraining: {beta: 0.2}\n"
BAD = "model: {name_or_path: org/m}\ntraining: {betta: 0.2, loss_type: sigmod}\n"


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    return path


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    return path


def test_help_lists_every_command(cli: Cli) -> None:
    result = cli("-h")
    assert result.exit_code == 0
    for command in ("prepare", "train", "eval", "push", "recipe"):
        assert command in result.output


def test_version(cli: Cli) -> None:
    result = cli("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"cpo {__version__}"


def test_run_returns_exit_codes(cli: Cli, good: Path) -> None:
    assert cli("--version").exit_code == 0
    assert cli("recipe", "validate", str(good)).exit_code == 0
    assert cli("no-such-command").exit_code == 2
    assert cli("recipe", "validate").exit_code == 2  # missing argument: usage error


def test_user_error_is_one_clear_block_without_traceback(cli: Cli, bad: Path) -> None:
    result = cli("recipe", "show", str(bad))
    assert result.exit_code == 1
    err = result.stderr
    assert "Traceback" not in err
    lines = err.splitlines()
    assert lines[0] == f"error: {bad}: 2 problems in the recipe"
    assert (
        lines[1] == "  - training.loss_type: got 'sigmod'; expected one of 'sigmoid', 'hinge', "
        "'ipo', 'simpo' or 'alphapo' (did you mean 'sigmoid'?)"
    )
    assert lines[2] == "  - training.betta: unknown key (got 0.2); did you mean 'training.beta'?"


def test_domain_exit_codes_pass_through(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    def gate_fails(*args: object, **kwargs: object) -> None:
        raise GateFailedError("eval_loss 0.9 is above --fail-over 0.5")

    from cpo_cli.commands import recipe as recipe_cmd

    monkeypatch.setattr(recipe_cmd, "_say", gate_fails)
    assert cli("recipe", "schema").exit_code == EXIT_GATE_FAILED


def test_interrupt_exits_130(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from cpo_cli.commands import recipe as recipe_cmd

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(recipe_cmd, "_say", interrupted)
    assert cli("recipe", "schema").exit_code == 130


def test_validate_reports_each_file(cli: Cli, good: Path, bad: Path) -> None:
    result = cli("recipe", "validate", str(good), str(bad))
    assert result.exit_code == 1
    out = result.stdout.splitlines()
    assert out[0] == f"OK {good}"
    assert out[1] == f"INVALID {bad}: 2 problems"
    assert out[2].startswith("  - training.loss_type: got 'sigmod'")
    assert out[3].startswith("  - training.betta: unknown key")


def test_validate_shows_warnings(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("model: {name_or_path: m}\ntraining: {loss_type: simpo}\n")
    result = cli("recipe", "validate", str(path))
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == f"OK {path} (1 warning)"
    assert "CPO-SimPO" in result.stdout
    strict = cli("recipe", "validate", "--strict", str(path))
    assert strict.exit_code == 1


def test_quiet_hides_ok_lines(cli: Cli, good: Path, bad: Path) -> None:
    result = cli("--quiet", "recipe", "validate", str(good), str(bad))
    assert f"OK {good}" not in result.stdout
    assert f"INVALID {bad}" in result.stdout
    from cpo_cli import console

    console.set_quiet(False)


def test_validate_every_shipped_recipe(cli: Cli) -> None:
    files = sorted(str(p) for p in RECIPES.rglob("*.yaml"))
    result = cli("recipe", "validate", *files)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("OK ") == len(files)


def test_show_applies_overrides_and_redacts(
    cli: Cli, good: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_verysecretvalue")
    result = cli(
        "recipe", "show", str(good), "training.beta=0.3", "training.hub_token=${oc.env:HF_TOKEN}"
    )
    assert result.exit_code == 0, result.output
    assert "hf_verysecretvalue" not in result.output
    assert "hub_token: '***'" in result.stdout
    assert "beta: 0.3" in result.stdout
    assert "per_device_train_batch_size: 8" in result.stdout  # defaults filled in


def test_show_changed_only(cli: Cli, good: Path) -> None:
    result = cli("recipe", "show", "--changed", str(good))
    assert result.exit_code == 0
    assert "beta: 0.2" in result.stdout
    assert "per_device_train_batch_size" not in result.stdout


def test_schema_is_json_schema(cli: Cli) -> None:
    result = cli("recipe", "schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["title"] == "cpo recipe"
    assert set(schema["properties"]) == {"model", "data", "peft", "training"}
    assert "loss_type" in schema["$defs"]["TrainingConfig"]["properties"]


def test_validate_a_folder_recursively(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "sub" / "b.yml").write_text(BAD)
    result = cli("recipe", "validate", str(tmp_path))
    assert result.exit_code == 1
    assert f"OK {tmp_path / 'a.yaml'}" in result.stdout
    assert f"INVALID {tmp_path / 'sub' / 'b.yml'}: 2 problems" in result.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("recipe", "validate", str(empty))
    assert result.exit_code == 1 and "is a folder" in result.stdout


def test_one_terminal_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich output only for a terminal without NO_COLOR; the help style follows the same check."""
    import io

    from cpo_cli import console

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert not console.is_plain(Terminal()) and console.is_plain(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert console.is_plain(Terminal())
    assert console.help_markup() is None
