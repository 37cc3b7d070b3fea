"""Every module of the package imports (catches syntax errors and broken imports in modules no
other test touches), and the start-up path stays free of torch and transformers."""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys

import pytest

import cpo_cli

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(cpo_cli.__path__, prefix="cpo_cli.")
    if not m.name.endswith("__main__")
)
HEAVY = ("torch", "transformers", "datasets", "accelerate", "peft")


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name: str) -> None:
    importlib.import_module(name)


def _heavy_modules_after(code: str) -> list[str]:
    """Run `code` in a fresh interpreter and list the heavy packages it imported."""
    probe = (
        f"{code}\nimport sys\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print('HEAVY:' + ','.join(heavy))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("HEAVY:"))
    return [m for m in line.removeprefix("HEAVY:").split(",") if m]


def test_help_does_not_import_torch() -> None:
    code = "from cpo_cli.cli import run\nrc = run(['--help'])\nassert rc == 0, rc"
    assert _heavy_modules_after(code) == []


def test_recipe_validate_does_not_import_torch() -> None:
    recipe = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "simpo.yaml")
    code = (
        f"from cpo_cli.cli import run\nrc = run(['recipe', 'validate', {recipe!r}])\nassert rc == 0"
    )
    assert _heavy_modules_after(code) == []


def test_python_m_cpo_cli_help_in_a_subprocess() -> None:
    """The real entry point, with `-X importtime` listing every module imported."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cpo_cli", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Usage: cpo" in out.stdout
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert imported, "-X importtime printed nothing"
    assert not {m for m in imported if m.split(".")[0] in HEAVY}
