"""Layers import only downwards, in the order docs/architecture.md documents. Every import of
every module counts: at the top, inside functions (lazy imports) and under TYPE_CHECKING."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import cpo_cli

PACKAGE = Path(cpo_cli.__file__).parent
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"


def documented_layers() -> list[list[str]]:
    """The layer line of docs/architecture.md, lowest first: `a, b  <  c  <  ...`."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    match = re.search(r"Layers import only downwards:\n\n\s+(.+)\n", text)
    assert match, f"{ARCHITECTURE} lost its layer line"
    return [[name.strip() for name in group.split(",")] for group in match.group(1).split("<")]


LAYERS = documented_layers()


def layer_of(module: str) -> int:
    """The layer of a `cpo_cli` module: that of the longest documented prefix it falls under
    (`losses.registry` before `losses`); the package root (`__version__`) is the lowest."""
    if module == "cpo_cli":
        return 0
    name = module.removeprefix("cpo_cli.")
    matches = [
        (len(prefix), index)
        for index, group in enumerate(LAYERS)
        for prefix in group
        if name == prefix or name.startswith(prefix + ".")
    ]
    if not matches:
        raise AssertionError(f"{module} is in no layer of {ARCHITECTURE.name}; add it there")
    return max(matches)[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    """A module or package of this source tree (read from disk: nothing is imported)."""
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every `cpo_cli` module a module imports (a `from pkg import name` that names a
    submodule counts as importing the submodule)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "cpo_cli")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] != "cpo_cli":
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if is_module(candidate) else base)
    return found


def upward_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """`importer -> imported` for each import that points to a higher layer."""
    tree = ast.parse(source)
    own = layer_of(module)
    return [
        f"{module} (layer {own}) imports {target} (layer {layer_of(target)})"
        for target in sorted(imported_modules(tree, module, is_package))
        if layer_of(target) > own
    ]


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_point_downwards(path: Path) -> None:
    module = module_name(path)
    source = path.read_text(encoding="utf-8")
    assert upward_imports(source, module, path.name == "__init__.py") == []


def test_an_upward_import_is_caught() -> None:
    """The check itself: an engine import from the data layer, lazy or not, fails."""
    lazy = "def f():\n    from cpo_cli.engine.loop import train\n"
    assert upward_imports(lazy, "cpo_cli.data.prepare") == [
        "cpo_cli.data.prepare (layer 3) imports cpo_cli.engine.loop (layer 4)"
    ]
    typed = "if TYPE_CHECKING:\n    from cpo_cli import evaluation\n"
    assert upward_imports(typed, "cpo_cli.engine.loop") == [
        "cpo_cli.engine.loop (layer 4) imports cpo_cli.evaluation (layer 5)"
    ]
    downward = "from cpo_cli.recipe import TrainingConfig\n"
    assert upward_imports(downward, "cpo_cli.engine.data") == []


def test_every_module_has_a_documented_layer() -> None:
    for path in MODULES:
        layer_of(module_name(path))
