"""Every third-party package `cpo_cli` imports is declared in pyproject.toml.

The rule (an AST scan of every module; `importlib.import_module("name")` with a literal name
counts as an import of `name`; imports under `if TYPE_CHECKING:` never run and do not count):

1. An import at module level must name a package of `[project.dependencies]`: importing any
   cpo_cli module needs nothing more than `pip install cpo-cli`.
2. An import inside a function may also name a package of a user extra of
   `[project.optional-dependencies]` (every extra but `dev` and `bench`): the extra documents
   it, and the call site turns its absence into a `DependencyMissingError` saying what to
   install.
3. Any other import is guarded: inside the body of a `try:` whose handler catches ImportError
   (or ModuleNotFoundError, Exception, BaseException, a bare except), so a missing package is
   a branch of the code, not a crash (e.g. the HTTP client huggingface_hub brings, probed by
   name).
4. Developer packages (`dev` and `bench` extras only, e.g. trl) are never imported at all.

Import names are mapped to distributions with `importlib.metadata` (`yaml` → PyYAML); a
package that is not installed here is looked up under its import name.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import cpo_cli

PACKAGE = Path(cpo_cli.__file__).parent
PYPROJECT = PACKAGE.parent / "pyproject.toml"
DEVELOPER_EXTRAS = ("dev", "bench")
_CATCHES_IMPORT_ERROR = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
    assert match, f"unreadable requirement {spec!r} in pyproject.toml"
    return _normalise(match.group(1))


def declared() -> tuple[set[str], set[str], set[str]]:
    """(dependencies, user-extra packages, developer-only packages), normalised names."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    required = {_requirement_name(r) for r in project["dependencies"]}
    extras = project.get("optional-dependencies", {})
    user = {_requirement_name(r) for k, v in extras.items() if k not in DEVELOPER_EXTRAS for r in v}
    developer = {_requirement_name(r) for k in DEVELOPER_EXTRAS for r in extras.get(k, [])}
    return required, user, developer - required - user


@dataclass(frozen=True)
class Import:
    module: str  # top-level import name
    where: str  # file:line
    in_function: bool
    guarded: bool


class _Finder(ast.NodeVisitor):
    def __init__(self, where: str) -> None:
        self.where = where
        self.depth = 0
        self.guards = 0
        self.found: list[Import] = []

    def _add(self, name: str, node: ast.AST) -> None:
        top = name.split(".")[0]
        if top and top != "cpo_cli" and top not in sys.stdlib_module_names:
            line = getattr(node, "lineno", 0)
            self.found.append(Import(top, f"{self.where}:{line}", self.depth > 0, self.guards > 0))

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
        if name == "TYPE_CHECKING":
            for stmt in node.orelse:
                self.visit(stmt)
            return
        self.generic_visit(node)

    def visit_Try(self, node: ast.Try) -> None:
        guarded = any(_catches_import_error(h) for h in node.handlers)
        self.guards += guarded
        for stmt in node.body:
            self.visit(stmt)
        self.guards -= guarded
        for part in (*node.handlers, *node.orelse, *node.finalbody):
            self.visit(part)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if not node.level and node.module:
            self._add(node.module, node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        named = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        first = node.args[0] if node.args else None
        literal = first.value if isinstance(first, ast.Constant) else None
        if named == "import_module" and isinstance(literal, str):
            self._add(literal, node)
        self.generic_visit(node)


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(getattr(n, "id", None) in _CATCHES_IMPORT_ERROR for n in names)


def imports_of(source: str, where: str) -> list[Import]:
    finder = _Finder(where)
    finder.visit(ast.parse(source))
    return finder.found


@functools.cache
def _installed() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


def distributions(module: str) -> set[str]:
    found = _installed().get(module) or [module]
    return {_normalise(d) for d in found}


def problems(found: list[Import]) -> list[str]:
    required, user, developer = declared()
    out = []
    for imp in found:
        dists = distributions(imp.module)
        if dists & developer:
            out.append(f"{imp.where}: imports {imp.module}, a developer-only package")
        elif dists & required or imp.guarded:
            continue
        elif not imp.in_function:
            out.append(f"{imp.where}: module-level import of {imp.module}, not a dependency")
        elif not dists & user:
            out.append(
                f"{imp.where}: imports {imp.module}, neither a dependency nor a user extra, "
                "and not inside a try/except ImportError"
            )
    return out


def test_every_import_is_declared() -> None:
    found = [
        imp
        for path in sorted(PACKAGE.rglob("*.py"))
        for imp in imports_of(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE)))
    ]
    assert {imp.module for imp in found} >= {"torch", "yaml", "huggingface_hub"}  # scan works
    assert problems(found) == []


def test_the_rule_itself() -> None:
    """Each branch of the rule, on snippets (wandb is a user extra, trl developer-only)."""
    snippet = """
import yaml
import wandb
def f():
    import wandb
    import notdeclared_pkg
    try:
        import guarded_pkg
    except ImportError:
        pass
    importlib.import_module("dynamic_pkg")
    from trl import CPOTrainer
if TYPE_CHECKING:
    import typing_only_pkg
"""
    assert problems(imports_of(snippet, "x.py")) == [
        "x.py:3: module-level import of wandb, not a dependency",
        "x.py:6: imports notdeclared_pkg, neither a dependency nor a user extra, and not "
        "inside a try/except ImportError",
        "x.py:11: imports dynamic_pkg, neither a dependency nor a user extra, and not inside "
        "a try/except ImportError",
        "x.py:12: imports trl, a developer-only package",
    ]


def test_declared_names_map_to_installed_distributions() -> None:
    """The dependencies this scan relies on are the ones pip installed (names not misspelt)."""
    required, _, _ = declared()
    installed = {_normalise(d.metadata["Name"]) for d in importlib.metadata.distributions()}
    assert required <= installed, required - installed
